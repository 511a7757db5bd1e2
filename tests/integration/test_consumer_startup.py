"""A consumer started while Postgres is out of reach waits for it instead of exiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from consumers.main import open_core_when_reachable
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.proc import free_port
from infra.embedded.redis import EmbeddedRedis
from services.settings import Settings
from tests.conftest import fresh_id, wait_for


async def test_it_waits_for_postgres_then_opens_its_resources(
    state_root: Path, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Chaos seed 12: a consumer restarted into a partition from Postgres exited,
    # and with no one to restart it the partitions had no consumer left.
    postgres = EmbeddedPostgres(
        state_root / fresh_id("postgres-later"), port=free_port(), fsync=False
    )
    settings = Settings.from_env(
        {}, database_url=postgres.url, redis_url=redis_server.url, db_pool_size=2
    )
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="flashsale.consumer")
    async with contextlib.AsyncExitStack() as stack:
        opening = asyncio.ensure_future(open_core_when_reachable(stack, settings, stop))
        try:

            async def waiting() -> bool:
                return "waiting" in caplog.text

            await wait_for(waiting, timeout_s=30)
            assert not opening.done()
            await asyncio.to_thread(postgres.start)
            core = await asyncio.wait_for(opening, timeout=60)
            assert core is not None
            assert await core.pool.fetchval("SELECT count(*) FROM schema_migrations") >= 1
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            await stack.aclose()
            await asyncio.to_thread(postgres.stop, "immediate")


async def test_stopped_before_postgres_answers_it_opens_nothing(
    redis_server: EmbeddedRedis,
) -> None:
    settings = Settings.from_env(
        {}, database_url=f"postgresql://u@127.0.0.1:{free_port()}/none", redis_url=redis_server.url
    )
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        opening = asyncio.ensure_future(open_core_when_reachable(stack, settings, stop))
        stop.set()
        assert await asyncio.wait_for(opening, timeout=30) is None
