"""Entry point of one gateway process: `python -m gateway`."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvloop
from aiohttp import web

from gateway.app import create_app
from services.logs import setup_logging
from services.settings import Settings

log = logging.getLogger("flashsale.gateway")

BACKLOG = 4096


def listening_socket(host: str, port: int) -> socket.socket:
    """SO_REUSEPORT, so several gateway processes can share one port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def main() -> None:
    settings = Settings.from_env()
    setup_logging(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sock = listening_socket(settings.gateway_host, settings.gateway_port)
    log.info("gateway listening on http://%s:%d", settings.gateway_host, settings.gateway_port)
    web.run_app(
        create_app(settings),
        sock=sock,
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=5,
    )
