"""A listener kept connected beside a block: reconnect after each loss until the block ends.

The gateway's two push channels (Postgres' result notifications, Redis' returned
units) only shorten waits that have a bound of their own, so a lost connection
is logged and retried, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

# One connection's life: returns when `stop` is set, raises when the connection is lost.
ListenOnce = Callable[[asyncio.Event], Awaitable[None]]


async def listen_until_stopped(
    listen_once: ListenOnce,
    stop: asyncio.Event,
    lost: tuple[type[BaseException], ...],
    what: str,
    log: logging.Logger,
    retry_s: float,
) -> None:
    """`listen_once` again `retry_s` after each loss (`lost`), until `stop` is set."""
    while not stop.is_set():
        try:
            await listen_once(stop)
        except lost as exc:
            log.warning("%s disconnected: %s", what, exc)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=retry_s)


@contextlib.asynccontextmanager
async def listening(
    listen_once: ListenOnce,
    lost: tuple[type[BaseException], ...],
    what: str,
    log: logging.Logger,
    retry_s: float,
) -> AsyncIterator[None]:
    """Runs `listen_until_stopped` while the block runs; stops it at the block's end."""
    stop = asyncio.Event()
    task = asyncio.create_task(listen_until_stopped(listen_once, stop, lost, what, log, retry_s))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
