"""Opening the Postgres pool, and turning driver errors into our own types."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from services.errors import UnavailableError

# A connection of our own or one borrowed from the pool: queries take either.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0

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


async def open_pool(
    url: str, size: int, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    async with database_errors():
        pool = await asyncpg.create_pool(
            url,
            server_settings=server_settings,
            min_size=1,
            max_size=size,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
        )
    assert pool is not None
    return pool
