"""Telling every gateway that units of an item came back on sale (Redis pub/sub).

A gateway caches "sold out" for a moment; a cancellation's units would wait out
that moment. The message only shortens the wait: a gateway that misses one (not
connected at that time) still forgets the hint when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from redis.exceptions import RedisError

from services.errors import UnavailableError
from services.reconnect import listening
from services.stockfilter.client import RedisClient, redis_errors
from services.stockfilter.keys import returns_channel

log = logging.getLogger(__name__)

POLL_S = 1.0
RECONNECT_S = 1.0


async def announce_returned(redis: RedisClient, item_ids: list[str]) -> None:
    async with redis_errors():
        for item_id in item_ids:
            await redis.publish(returns_channel(), item_id)


async def announce_changed(redis: RedisClient, item_ids: list[str]) -> None:
    """An admin wrote these items: every gateway forgets all it cached of them (a
    listener forgets an item's hints whole on any message), a cached "no such
    item" above all, which would otherwise answer 404 for a new item a while."""
    await announce_returned(redis, item_ids)


async def _listen_once(
    redis: RedisClient, on_item: Callable[[str], None], stop: asyncio.Event
) -> None:
    pubsub = redis.pubsub()
    try:
        async with redis_errors():
            await pubsub.subscribe(returns_channel())
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if message is not None and message["type"] == "message":
                    data = message["data"]
                    on_item(data.decode() if isinstance(data, bytes) else str(data))
    finally:
        with contextlib.suppress(RedisError, OSError):  # closing a broken connection
            await pubsub.aclose()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def returned_units_listener(
    redis: RedisClient, on_item: Callable[[str], None]
) -> AsyncIterator[None]:
    """Calls `on_item(item_id)` for every announcement while the block runs."""

    async def listen_once(stop: asyncio.Event) -> None:
        await _listen_once(redis, on_item, stop)

    lost = (UnavailableError,)
    async with listening(listen_once, lost, "returned-units listener", log, RECONNECT_S):
        yield
