"""Entry point of one gateway process: `python -m gateway`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys

import uvloop
from aiohttp import web

from gateway.app import create_app
from gateway.protocol import GatewayRunner
from services.errors import SettingsError
from services.logs import setup_logging
from services.settings import Settings
from services.tracing import Tracing, tracing_from_env

log = logging.getLogger("flashsale.gateway")

BACKLOG = 4096
# Young-generation collections every this many tracked allocations (Python's
# default is 700): under load the cyclic collector took about a sixth of the
# gateway's CPU (perf: gc_collect_main, visit_decref), mostly walking the
# in-flight requests' coroutines again and again. Garbage without cycles is
# freed by reference counting either way; cycles only wait a little longer.
GC_YOUNG_THRESHOLD = 50_000
SHUTDOWN_TIMEOUT_S = 5.0
EXIT_BAD_SETTINGS = 2


def listening_socket(host: str, port: int) -> socket.socket:
    """SO_REUSEPORT, so several gateway processes can share one port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def serve(app: web.Application, sock: socket.socket) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    tune_gc()
    try:
        await web.SockSite(runner, sock).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def tune_gc() -> None:
    """Once the app is up: what startup built (modules, pools, metrics) lives as
    long as the process, so the full collections stop walking it (gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _settings() -> tuple[Settings, Tracing]:
    """Settings fit to sign tokens, and tracing; a clear message and exit 2 otherwise."""
    try:
        settings = Settings.from_env()
        settings.require_secrets()
        tracing = tracing_from_env("flashsale-gateway")
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    return settings, tracing


def main() -> None:
    settings, tracing = _settings()
    setup_logging(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sock = listening_socket(settings.gateway_host, settings.gateway_port)
    log.info("gateway listening on http://%s:%d", settings.gateway_host, settings.gateway_port)
    try:
        asyncio.run(serve(create_app(settings, tracing), sock))
    finally:
        tracing.shutdown()
