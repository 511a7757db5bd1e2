"""Every network call on the request path has a deadline (issue 9, finding 9).

A half-open connection (the peer accepts and never answers) must turn into
UnavailableError (503) within the configured deadline, not hang the request.
Each check runs under an asyncio.timeout far above that deadline: the old code
hangs into it and fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.ratelimit import USER, open_rate_limits
from services.errors import UnavailableError
from services.settings import Settings
from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import close_redis, open_redis
from services.stockfilter.idempotency import IdempotencyStore
from services.store.db import open_pool
from services.store.items import get_item

DEADLINE_S = 0.5
HANG_GUARD_S = 20 * DEADLINE_S


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections, reads nothing and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def test_rate_limiter_on_a_silent_redis_answers_unavailable(
    settings: Settings, silent_server: int
) -> None:
    silent = settings.replace(redis_url=f"redis://127.0.0.1:{silent_server}", redis_cluster=False)
    limits = open_rate_limits(silent, socket_timeout_s=DEADLINE_S)
    # Ours, not left to the driver: redis-py 8 defaults to 5 s, older ones to none.
    pool = limits.storage.bridge.storage.connection_pool  # type: ignore[attr-defined]
    assert pool.connection_kwargs["socket_timeout"] == DEADLINE_S
    assert pool.connection_kwargs["socket_connect_timeout"] == DEADLINE_S
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(UnavailableError):
                await limits.check(USER, "alice")
    finally:
        await limits.close()


async def test_a_full_pool_answers_unavailable_instead_of_waiting(settings: Settings) -> None:
    """Pool.fetchrow() acquires with no timeout of its own: a query on a pool whose
    every connection is held (stuck on a half-open socket, say) waited for ever."""
    pool = await open_pool(settings.database_url, 1, acquire_timeout_s=DEADLINE_S)
    try:
        async with pool.acquire() as _held:
            async with asyncio.timeout(HANG_GUARD_S):
                with pytest.raises(UnavailableError):
                    await get_item(pool, "any-item")
        assert isinstance(pool, asyncpg.Pool)
    finally:
        await pool.close()


async def test_auto_pipeline_on_a_silent_redis_answers_unavailable(
    settings: Settings, silent_server: int
) -> None:
    """The auto-pipeline reads a batch's replies under one deadline of its own."""
    client = open_redis(f"redis://127.0.0.1:{silent_server}", cluster=False)
    pipe = AutoPipeline(client, deadline_s=DEADLINE_S)
    idempotency = IdempotencyStore(client, 60, pipe)
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(UnavailableError):
                await idempotency.get("any-purchase")
    finally:
        await close_redis(client)
