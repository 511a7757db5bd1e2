"""The lock designs of the articles, each with the library its users pick.

A design holds an item's lock around the critical section (section.py) and
hands it a `Held`: the fencing token when the design has one, the Postgres
connection when the lock lives in a transaction. Every design is built from one
`LockSetup`, which also travels as JSON to the worker and server processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from typing import Protocol

import aetcd
import asyncpg
import redis
import redis.asyncio as aioredis
import redis_lock
from pottery import AIORedlock

from loadtests.bench.redislock import RedisLock
from services.store.db import Connection, open_pool
from services.store.queries import parse_queries

SET_NX_PX = "set_nx_px"
WATCHDOG = "watchdog"
REDLOCK = "redlock"
PG_ADVISORY = "pg_advisory"
ETCD_LEASE = "etcd_lease"
ETCD_LEASE_FENCED = "etcd_lease_fenced"
FLASHSALE = "flashsale"
LOCK_DESIGNS = (SET_NX_PX, WATCHDOG, REDLOCK, PG_ADVISORY, ETCD_LEASE, ETCD_LEASE_FENCED)
DESIGNS = (*LOCK_DESIGNS, FLASHSALE)
REDIS_DESIGNS = (SET_NX_PX, WATCHDOG, REDLOCK)
ETCD_DESIGNS = (ETCD_LEASE, ETCD_LEASE_FENCED)

POOL_SIZE = 10
REDIS_POOL_SIZE = 64
# python-redis-lock is synchronous: each waiter blocks a thread in BLPOP.
WATCHDOG_THREADS = 64
RELEASE_THREADS = 4
SOCKET_MARGIN_S = 5.0
ETCD_MIN_TTL_S = 2  # etcd grants no lease shorter than this (it rounds up)


class Busy(Exception):
    """The lock stayed busy for the whole wait: the request is turned away."""


@dataclass(frozen=True, slots=True)
class LockSetup:
    design: str
    database_url: str
    redis_urls: tuple[str, ...] = ()  # one for the single-node designs, three for redlock
    etcd_port: int = 0
    ttl_s: float = 10.0
    wait_s: float = 10.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LockSetup:
        raw = json.loads(text)
        raw["redis_urls"] = tuple(raw["redis_urls"])
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class Held:
    token: int | None = None  # the fencing token, when the design gives one
    conn: Connection | None = None  # the transaction holding the lock


class Design(Protocol):
    def hold(self, item_id: str) -> contextlib.AbstractAsyncContextManager[Held]: ...


def library(design: str) -> str:
    """`name version` of the library the design runs on."""
    package = {
        SET_NX_PX: "redis",
        WATCHDOG: "python-redis-lock",
        REDLOCK: "pottery",
        PG_ADVISORY: "asyncpg",
        ETCD_LEASE: "aetcd",
        ETCD_LEASE_FENCED: "aetcd",
        FLASHSALE: "flashsale",
    }[design]
    return f"{package} {metadata.version(package)}"


def redis_key(design: str, item_id: str) -> str:
    """Where the design's library stores an item's lock in Redis."""
    return {
        SET_NX_PX: f"bench:lock:{item_id}",
        WATCHDOG: f"lock:{item_id}",  # python-redis-lock's own prefix
        REDLOCK: f"redlock:{item_id}",  # pottery's own prefix
    }[design]


def load_queries() -> dict[str, str]:
    return parse_queries((resources.files("loadtests.bench.locks") / "locks.sql").read_text())


@dataclass(slots=True)
class SetNxPx:
    """redis-py: SET key token NX PX ttl, retried while busy; compare-and-delete release."""

    lock: RedisLock
    wait_s: float

    @contextlib.asynccontextmanager
    async def hold(self, item_id: str) -> AsyncIterator[Held]:
        key = redis_key(SET_NX_PX, item_id)
        token = await self.lock.acquire(key, self.wait_s)
        if token is None:
            raise Busy(key)
        try:
            yield Held()
        finally:
            await self.lock.release(key, token)


@dataclass(slots=True)
class Watchdog:
    """python-redis-lock with auto_renewal: a thread extends the key every ttl*2/3."""

    client: redis.StrictRedis
    ttl_s: int
    wait_s: float
    threads: ThreadPoolExecutor
    # Releases get threads of their own: queued behind blocked waiters, the
    # holder could not release and every waiter would time out.
    release_threads: ThreadPoolExecutor

    @contextlib.asynccontextmanager
    async def hold(self, item_id: str) -> AsyncIterator[Held]:
        lock = redis_lock.Lock(self.client, item_id, expire=self.ttl_s, auto_renewal=True)
        loop = asyncio.get_running_loop()
        acquired = await loop.run_in_executor(
            self.threads, lambda: lock.acquire(blocking=True, timeout=max(1, int(self.wait_s)))
        )
        if not acquired:
            raise Busy(item_id)
        try:
            yield Held()
        finally:
            await loop.run_in_executor(self.release_threads, lock.release)


@dataclass(slots=True)
class Redlock:
    """pottery's AIORedlock over three independent Redis servers (a majority of two)."""

    masters: list[aioredis.Redis]
    ttl_s: float
    wait_s: float

    @contextlib.asynccontextmanager
    async def hold(self, item_id: str) -> AsyncIterator[Held]:
        lock = AIORedlock(key=item_id, masters=self.masters, auto_release_time=self.ttl_s)
        if not await lock.acquire(timeout=self.wait_s):
            raise Busy(item_id)
        try:
            yield Held()
        finally:
            await lock.release()


@dataclass(slots=True)
class PgAdvisory:
    """asyncpg: pg_advisory_xact_lock in the transaction that reads and writes."""

    pool: asyncpg.Pool
    queries: dict[str, str]
    wait_s: float

    @contextlib.asynccontextmanager
    async def hold(self, item_id: str) -> AsyncIterator[Held]:
        async with self.pool.acquire() as conn, conn.transaction():
            # A waiter gives up as the other designs' waiters do.
            await conn.execute(f"SET LOCAL lock_timeout = {int(self.wait_s * 1000)}")
            try:
                await conn.execute(self.queries["advisory_lock"], item_id)
            except asyncpg.LockNotAvailableError as exc:
                raise Busy(item_id) from exc
            yield Held(conn=conn)


@dataclass(slots=True)
class EtcdLease:
    """aetcd's lock: a key attached to a lease of ttl seconds; its revision is the token."""

    client: aetcd.Client
    ttl_s: int
    wait_s: float
    fenced: bool

    @contextlib.asynccontextmanager
    async def hold(self, item_id: str) -> AsyncIterator[Held]:
        lock = self.client.lock(f"bench/lock/{item_id}".encode(), ttl=self.ttl_s)
        if not await lock.acquire(timeout=self.wait_s):
            raise Busy(item_id)
        try:
            yield Held(token=int(lock.revision) if self.fenced else None)
        finally:
            await lock.release()


@dataclass(slots=True)
class Opened:
    design: Design
    pool: asyncpg.Pool
    queries: dict[str, str] = field(default_factory=load_queries)


@contextlib.asynccontextmanager
async def open_design(setup: LockSetup) -> AsyncIterator[Opened]:
    """The design's clients and the Postgres pool, closed on exit."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await open_pool(setup.database_url, POOL_SIZE)
        stack.push_async_callback(pool.close)
        queries = load_queries()
        design = await _design(setup, pool, queries, stack)
        yield Opened(design, pool, queries)


async def _design(
    setup: LockSetup,
    pool: asyncpg.Pool,
    queries: dict[str, str],
    stack: contextlib.AsyncExitStack,
) -> Design:
    if setup.design == SET_NX_PX:
        client = _async_redis(setup.redis_urls[0], stack)
        script = (resources.files("loadtests.bench") / "release.lua").read_text()
        ttl_ms = int(setup.ttl_s * 1000)
        return SetNxPx(RedisLock(client, client.register_script(script), ttl_ms), setup.wait_s)
    if setup.design == WATCHDOG:
        # redis-py 8 reads with a 5 s socket timeout by default, which turns
        # python-redis-lock's longer BLPOP wait into a TimeoutError (benchmarks.md).
        sync_client = redis.StrictRedis.from_url(
            setup.redis_urls[0], socket_timeout=setup.wait_s + SOCKET_MARGIN_S
        )
        stack.callback(sync_client.close)
        threads = ThreadPoolExecutor(WATCHDOG_THREADS, thread_name_prefix="watchdog")
        stack.callback(threads.shutdown, wait=False, cancel_futures=True)
        releases = ThreadPoolExecutor(RELEASE_THREADS, thread_name_prefix="release")
        stack.callback(releases.shutdown, wait=False, cancel_futures=True)
        ttl = max(1, round(setup.ttl_s))
        return Watchdog(sync_client, ttl, setup.wait_s, threads, releases)
    if setup.design == REDLOCK:
        masters = [_async_redis(url, stack) for url in setup.redis_urls]
        return Redlock(masters, setup.ttl_s, setup.wait_s)
    if setup.design == PG_ADVISORY:
        return PgAdvisory(pool, queries, setup.wait_s)
    if setup.design in ETCD_DESIGNS:
        client = aetcd.Client("127.0.0.1", setup.etcd_port)
        await client.connect()
        stack.push_async_callback(client.close)
        ttl = max(ETCD_MIN_TTL_S, round(setup.ttl_s))
        return EtcdLease(client, ttl, setup.wait_s, setup.design == ETCD_LEASE_FENCED)
    raise ValueError(f"no lock design {setup.design!r}")


def _async_redis(url: str, stack: contextlib.AsyncExitStack) -> aioredis.Redis:
    connections = aioredis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE)
    stack.push_async_callback(connections.disconnect)
    client = aioredis.Redis(connection_pool=connections)
    stack.push_async_callback(client.aclose)
    return client
