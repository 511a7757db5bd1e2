"""Opening the Redis client (one node or a cluster), and converting its errors."""

from __future__ import annotations

from types import TracebackType
from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.errors import UnavailableError

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"

POOL_SIZE = 64
CLUSTER_POOL_SIZE_PER_NODE = 1000
SOCKET_TIMEOUT_S = 5.0
# A restarted Redis closes every pooled connection: retry once or twice on a new one.
RETRIES = 2
POOL_WAIT_S = 5.0


def open_redis(url: str, cluster: bool) -> RedisClient:
    """Build the client; nothing connects until the first command."""
    if cluster:
        return RedisCluster.from_url(
            url,
            retry=_retry(),
            max_connections=CLUSTER_POOL_SIZE_PER_NODE,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        )
    # redis-py's plain pool raises when exhausted; the blocking one waits.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        retry=_retry(),
        retry_on_error=[RedisConnectionError],
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )
    return aioredis.Redis(connection_pool=pool)


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES)


async def close_redis(client: RedisClient) -> None:
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose()
        await client.connection_pool.disconnect()


class redis_errors:  # lower case: used as contextlib's are, `async with redis_errors():`
    """Redis down or unreachable becomes UnavailableError: callers fail closed (503).

    A class, not an @asynccontextmanager: every admission enters it twice, and
    the generator-based one cost a microsecond more each time."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # never swallows: only converts
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            raise UnavailableError(f"redis unavailable: {type(exc).__name__}: {exc}") from exc
        if isinstance(exc, RedisError):
            raise UnavailableError(f"redis error: {type(exc).__name__}: {exc}") from exc
