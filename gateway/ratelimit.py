"""Rate limits with the `limits` library on Redis: per user, per client address, per item."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from gateway.errors import ApiError
from services.errors import UnavailableError
from services.settings import Settings
from services.stockfilter.client import POOL_SIZE, POOL_WAIT_S, SOCKET_TIMEOUT_S
from services.stockfilter.keys import limits_prefix

USER = "user"
CLIENT = "client"
ITEM = "item"


@dataclass
class RateLimits:
    limiter: SlidingWindowCounterRateLimiter
    storage: RedisStorage
    per_user: RateLimitItem
    per_client: RateLimitItem
    per_item: RateLimitItem

    async def check(self, kind: str, identity: str) -> None:
        """429 when over the limit; 503 when Redis cannot answer (fail closed, never open)."""
        item = {USER: self.per_user, CLIENT: self.per_client, ITEM: self.per_item}[kind]
        try:
            allowed = await self.limiter.hit(item, kind, identity)
            if allowed:
                return
            stats = await self.limiter.get_window_stats(item, kind, identity)
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
        # limits keeps its redis-py client on the bridge; it offers no close of its own.
        client = getattr(self.storage.bridge, "storage", None)
        if client is not None:
            await client.aclose()


def open_rate_limits(settings: Settings, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> RateLimits:
    """Every Redis call has a deadline: a half-open connection answers 503, never hangs."""
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
    return RateLimits(
        limiter=SlidingWindowCounterRateLimiter(storage),
        storage=storage,
        per_user=parse(settings.user_rate),
        per_client=parse(settings.client_rate),
        per_item=parse(settings.item_rate),
    )
