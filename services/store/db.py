"""Opening the Postgres pool, and turning driver errors into our own types."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext

from services.errors import UnavailableError

# asyncpg.create_pool's defaults.
MAX_QUERIES_PER_CONNECTION = 50_000
MAX_INACTIVE_CONNECTION_S = 300.0

# A connection of our own or one borrowed from the pool: queries take either.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
# Waiting for a pooled connection: as long as one command may hold it, no longer.
ACQUIRE_TIMEOUT_S = COMMAND_TIMEOUT_S

# Errors that mean "Postgres cannot be reached now": retry later, answer 503.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    TimeoutError,
)


@contextlib.asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Convert connection-level driver errors to UnavailableError at the driver edge."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise UnavailableError(f"postgres unavailable: {type(exc).__name__}: {exc}") from exc


class DeadlinePool(asyncpg.Pool):
    """A pool whose acquire() has a deadline unless given one.

    asyncpg's `pool.fetchrow()`, `fetch()`, `execute()`... acquire with no
    timeout: with every connection held (a half-open socket, a stuck command) a
    request would wait for as long as they do. The deadline also bounds the
    release (asyncpg applies the acquire timeout to it).
    """

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s
        # Acquires that found every connection in use, so waited for one (the
        # gateway's metrics: a pool its users queue for).
        self.exhausted = 0

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 (asyncpg's own)
        # Every acquire of asyncpg's pool (acquire(), fetch(), execute()...) ends
        # here; its queue holds the connections not in use.
        if self._queue.empty():  # type: ignore[attr-defined]
            self.exhausted += 1
        return await super()._acquire(timeout)  # type: ignore[misc]


def pool_exhaustions(pool: asyncpg.Pool) -> int:
    """How many acquires of `pool` found every connection in use (0: not a DeadlinePool)."""
    return pool.exhausted if isinstance(pool, DeadlinePool) else 0


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """No reset query on release (asyncpg still rolls back a transaction left open)."""


async def open_pool(
    url: str,
    size: int,
    server_settings: dict[str, str] | None = None,
    acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
    stateless: bool = False,
) -> asyncpg.Pool:
    """`stateless`: the pool's users leave no session state behind (no session
    advisory lock, LISTEN, cursor or SET outside a transaction), so a connection
    goes back without asyncpg's reset query (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`): a second round trip on every pooled query, a fifth
    of the gateway's cost of a batched lookup in a sold-out storm (py-spy)."""
    # What asyncpg.create_pool() does, with our pool class (it takes none).
    pool = DeadlinePool(
        url,
        acquire_timeout_s=acquire_timeout_s,
        server_settings=server_settings,
        min_size=1,
        max_size=size,
        max_queries=MAX_QUERIES_PER_CONNECTION,
        max_inactive_connection_lifetime=MAX_INACTIVE_CONNECTION_S,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        reset=_keep_session if stateless else None,
    )
    async with database_errors():
        await pool
    return pool


async def ping(pool: asyncpg.Pool) -> None:
    """A round trip to Postgres (readiness); raises whatever the driver raises."""
    await pool.fetchval("SELECT 1")
