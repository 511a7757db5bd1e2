"""The long-lived clients of a process, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from services.settings import Settings
from services.stockfilter.activity import ActiveItems
from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import RedisClient, close_redis, open_redis
from services.stockfilter.filter import StockFilter
from services.stockfilter.idempotency import IdempotencyStore
from services.store.db import database_errors, open_pool
from services.store.migrate import migrate


@dataclass(frozen=True, slots=True)
class CoreResources:
    """Postgres pool and Redis client, shared by the gateway, consumers and CLI."""

    settings: Settings
    pool: asyncpg.Pool
    redis: RedisClient
    stock: StockFilter
    idempotency: IdempotencyStore
    activity: ActiveItems
    pipe: AutoPipeline


@contextlib.asynccontextmanager
async def open_core(
    settings: Settings,
    *,
    run_migrations: bool = False,
    server_settings: dict[str, str] | None = None,
) -> AsyncIterator[CoreResources]:
    async with contextlib.AsyncExitStack() as stack:
        # Every query of the services is one statement or one transaction:
        # nothing outlives its use of a connection (a test checks the SQL).
        pool = await open_pool(
            settings.database_url, settings.db_pool_size, server_settings, stateless=True
        )
        stack.push_async_callback(pool.close)
        if run_migrations:
            async with database_errors(), pool.acquire() as conn:
                await migrate(conn)
        redis = open_redis(settings.redis_url, settings.redis_cluster)
        stack.push_async_callback(close_redis, redis)
        pipe = AutoPipeline(redis)
        stack.push_async_callback(pipe.close)
        yield CoreResources(
            settings=settings,
            pool=pool,
            redis=redis,
            stock=StockFilter(redis, settings.stock_shards, pipe),
            idempotency=IdempotencyStore(redis, settings.idempotency_ttl_s, pipe),
            activity=ActiveItems(redis, pipe),
            pipe=pipe,
        )
