"""Rate limits with the `limits` library: per user, per client address, per item
(purchases), per client address on the other public routes (lookups on Redis,
shared by every gateway; views in this gateway's memory, so /readyz and /metrics
still answer while Redis is down)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.commands.core import AsyncScript

from gateway.errors import ApiError
from services.errors import UnavailableError
from services.settings import Settings
from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import POOL_SIZE, POOL_WAIT_S, SOCKET_TIMEOUT_S, RedisClient
from services.stockfilter.keys import limits_prefix

USER = "user"
CLIENT = "client"
ITEM = "item"
LOOKUP = "lookup"
VIEW = "view"


@dataclass
class RateLimits:
    limiter: SlidingWindowCounterRateLimiter
    storage: RedisStorage
    per_user: RateLimitItem
    per_client: RateLimitItem
    per_item: RateLimitItem
    per_lookup: RateLimitItem
    per_view: RateLimitItem
    local_storage: MemoryStorage
    owns_client: bool = True

    def __post_init__(self) -> None:
        self.local = SlidingWindowCounterRateLimiter(self.local_storage)

    async def check(self, kind: str, identity: str) -> None:
        """429 when over the limit; 503 when Redis cannot answer (fail closed, never open)."""
        item = {
            USER: self.per_user,
            CLIENT: self.per_client,
            ITEM: self.per_item,
            LOOKUP: self.per_lookup,
            VIEW: self.per_view,
        }[kind]
        limiter = self.local if kind == VIEW else self.limiter
        try:
            allowed = await limiter.hit(item, kind, identity)
            if allowed:
                return
            stats = await limiter.get_window_stats(item, kind, identity)
        except StorageError as exc:
            raise UnavailableError(f"rate limiter storage: {exc}") from exc
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests ({kind} limit {item})",
            {"Retry-After": str(retry_after), "X-RateLimit-Scope": kind},
        )

    async def close(self) -> None:
        timer = self.local_storage.timer  # its expiry pass, started by a hit
        if timer is not None and not timer.done():
            timer.cancel()
        if not self.owns_client:
            return  # the process's shared client: closed where it was opened
        # limits keeps its redis-py client on the bridge; it offers no close of its own.
        client = getattr(self.storage.bridge, "storage", None)
        if client is not None:
            await client.aclose()


class PipelinedScript:
    """limits' sliding-window script, sent through the process's auto-pipeline.

    Three limits per purchase were three round trips of their own, a quarter of
    the gateway's CPU under load (py-spy, docs/benchmarks.md); batched with the
    other requests' Redis calls they cost a line in a shared pipeline. The
    script, its keys and its arguments stay exactly limits' own.
    """

    def __init__(self, script: AsyncScript, pipe: AutoPipeline) -> None:
        self.script = script
        self.pipe = pipe

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
        return await self.pipe.script(self.script, keys, args)


def open_rate_limits(
    settings: Settings,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    shared: tuple[RedisClient, AutoPipeline] | None = None,
) -> RateLimits:
    """Every Redis call has a deadline: a half-open connection answers 503, never hangs.

    With `shared` (the process's client and auto-pipeline, one Redis node), limits
    uses that client's pool instead of opening a second one."""
    if shared is not None:
        redis, pipe = shared
        if isinstance(redis, aioredis.Redis):
            return _shared_rate_limits(settings, redis, pipe)
    uri = settings.redis_url.replace("redis://", "async+redis://", 1)
    deadlines = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s}
    storage: RedisStorage
    if settings.redis_cluster:
        storage = RedisClusterStorage(
            uri.replace("async+redis://", "async+redis+cluster://", 1),
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=limits_prefix(),
            **deadlines,
        )
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, **deadlines
        )
        storage = RedisStorage(
            uri,
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=limits_prefix(),
            connection_pool=pool,  # type: ignore[arg-type]
        )
    return _limits(settings, storage)


def _shared_rate_limits(
    settings: Settings, redis: aioredis.Redis, pipe: AutoPipeline
) -> RateLimits:
    storage = RedisStorage(
        settings.redis_url.replace("redis://", "async+redis://", 1),
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix=limits_prefix(),
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
    )
    bridge = storage.bridge
    bridge.lua_acquire_sliding_window = PipelinedScript(  # type: ignore[attr-defined]
        bridge.lua_acquire_sliding_window,  # type: ignore[attr-defined]
        pipe,
    )
    return _limits(settings, storage, owns_client=False)


def _limits(settings: Settings, storage: RedisStorage, owns_client: bool = True) -> RateLimits:
    return RateLimits(
        limiter=SlidingWindowCounterRateLimiter(storage),
        storage=storage,
        per_user=parse(settings.user_rate),
        per_client=parse(settings.client_rate),
        per_item=parse(settings.item_rate),
        per_lookup=parse(settings.lookup_rate),
        per_view=parse(settings.view_rate),
        local_storage=MemoryStorage(),
        owns_client=owns_client,
    )
