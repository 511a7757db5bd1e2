"""Real services, started once per test session on free ports.

Postgres, Redis, a Redis Cluster and the broker run as child processes of the
test session; each test isolates itself with fresh item ids and users.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infra.embedded.broker import EmbeddedBroker
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.redis import EmbeddedRedis
from infra.stack import stop_from_file
from infra.stackfile import StackFile
from services.errors import FlashsaleError
from services.resources import CoreResources, open_core
from services.settings import SESSION_TIMEOUT_S, Settings
from services.store.leases import ensure_leases
from services.topics import ensure_topic

TEST_PARTITIONS = 4


@pytest.fixture(scope="session")
def state_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="flashsale-tests-"))
    root.chmod(0o755)  # the postgres user must reach its data folder
    yield root
    # A test cut short (a timeout) may leave a detached stack behind: stop it.
    for stack_json in root.glob("*/stack.json"):
        with contextlib.suppress(FlashsaleError, OSError, ValueError):
            stop_from_file(stack_json.parent, StackFile.load(stack_json.parent))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(state_root: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(state_root / "postgres", fsync=False)
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture(scope="session")
def redis_server(state_root: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(state_root / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(state_root: Path) -> Iterator[EmbeddedRedis]:
    cluster = EmbeddedRedis(state_root / "redis-cluster", cluster=True)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def broker(state_root: Path) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(state_root / "kafka")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(
    state_root: Path,
    postgres: EmbeddedPostgres,
    redis_server: EmbeddedRedis,
    broker: EmbeddedBroker,
) -> Settings:
    return Settings.from_env(
        {},
        database_url=postgres.url,
        redis_url=redis_server.url,
        kafka_bootstrap=broker.bootstrap,
        topic=f"purchases-{secrets.token_hex(3)}",
        partitions=TEST_PARTITIONS,
        admin_token=secrets.token_urlsafe(32),
        secret=secrets.token_urlsafe(32),
        state_dir=state_root,
        # The product's own (2 s): the embedded broker holds each rebalance for half
        # of it (settings.py), so 6 s cost every fault test 3 s a rebalance and 6 s
        # more before a dead member's partitions moved.
        session_timeout_s=SESSION_TIMEOUT_S,
        reservation_stale_s=3.0,
        consumer_group=f"test-{secrets.token_hex(3)}",
        db_pool_size=5,
    )


@pytest.fixture(scope="session")
async def core(settings: Settings) -> AsyncIterator[CoreResources]:
    async with open_core(settings, run_migrations=True) as resources:
        await ensure_leases(resources.pool, settings.topic, settings.partitions)
        await ensure_topic(settings.kafka_bootstrap, settings.topic, settings.partitions)
        yield resources


def fresh_id(prefix: str = "sku") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def wait_for(check, timeout_s: float = 30.0, interval_s: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll an async `check` until it returns a truthy value; fail after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last value: {last!r})")
