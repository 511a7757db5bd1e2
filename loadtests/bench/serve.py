"""How every bench server process serves: its aiohttp app on uvloop, on the
listening socket its parent handed down (the parent picked the port)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import uvloop
from aiohttp import web

SHUTDOWN_TIMEOUT_S = 2.0


def serve_on_fd(create_app: Callable[[], web.Application], fd: int) -> None:
    """Until SIGTERM or SIGINT; `create_app` runs once the event loop policy is set."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            create_app(),
            sock=socket.socket(fileno=fd),
            access_log=None,
            print=None,
            handle_signals=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
