"""The faults of the bench's `locks` phase are real, and the safe designs are safe.

No timing is asserted. What must hold: the paused holder was really stopped
(its /proc state `T`) past the lock's TTL; the failover really promoted a
replica that lacked the lock key the primary had granted; flashsale and the
fenced etcd lock sell exactly their stock across a pause that lets the lock
expire under its holder.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from infra.embedded.etcd import EmbeddedEtcd
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.redis import EmbeddedRedis
from loadtests.bench.baselines import load_queries as baseline_queries
from loadtests.bench.locks.designs import (
    ETCD_LEASE_FENCED,
    FLASHSALE,
    SET_NX_PX,
    LockSetup,
    load_queries,
    redis_key,
)
from loadtests.bench.locks.faults import FailoverNodes, Workers, failover_round, pause_round
from loadtests.bench.locks.phase import (
    FAILOVER_TTL_S,
    FAILOVER_WAIT_S,
    PAUSE_OTHERS,
    PAUSE_S,
    PAUSE_STOCK,
    PAUSE_TTL_S,
    PAUSE_WAIT_S,
)
from loadtests.bench.locks.section import confirmed
from services.resources import CoreResources
from services.store.items import upsert_item
from services.store.leases import ensure_leases

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def etcd(state_root: Path) -> Iterator[EmbeddedEtcd]:
    server = EmbeddedEtcd(state_root / "etcd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def queries(core: CoreResources) -> dict[str, str]:
    merged = {**baseline_queries(), **load_queries()}
    await core.pool.execute(merged["create_tables"])
    await core.pool.execute(merged["add_fence"])
    return merged


def _lock_items(pool: asyncpg.Pool, queries: dict[str, str]):  # type: ignore[no-untyped-def]
    async def new_item(stock: int) -> str:
        item = f"locks-test-{secrets.token_hex(3)}"
        await pool.execute(queries["create_item"], item, stock)
        return item

    async def sold(item: str) -> int:
        return int((await pool.fetchrow(queries["tally"], item))["orders"])

    return new_item, sold


async def test_the_paused_holder_is_stopped_past_the_ttl(
    core: CoreResources,
    postgres: EmbeddedPostgres,
    redis_server: EmbeddedRedis,
    queries: dict[str, str],
    state_root: Path,
) -> None:
    setup = LockSetup(SET_NX_PX, postgres.url, (redis_server.url,), 0, PAUSE_TTL_S, PAUSE_WAIT_S)
    new_item, sold = _lock_items(core.pool, queries)
    workers = Workers(state_root / "locks-test" / "workers.log")
    result = await pause_round(setup, workers, new_item, sold, PAUSE_STOCK, PAUSE_OTHERS, PAUSE_S)
    assert result.evidence == {"holder_state_T": True, "still_T_after_pause": True}
    # The others sold the stock while the holder was stopped; it wrote on top.
    assert result.sold == PAUSE_STOCK + 1, result


async def test_the_failover_promotes_a_replica_that_lacked_the_lock(
    core: CoreResources, postgres: EmbeddedPostgres, queries: dict[str, str], state_root: Path
) -> None:
    setup = LockSetup(SET_NX_PX, postgres.url, (), 0, FAILOVER_TTL_S, FAILOVER_WAIT_S)
    new_item, sold = _lock_items(core.pool, queries)
    workers = Workers(state_root / "locks-test" / "workers.log")
    nodes = FailoverNodes(state_root / "locks-test" / "failover", 1, 1)
    result = await failover_round(
        setup, workers, new_item, sold, nodes, lambda item: redis_key(SET_NX_PX, item)
    )
    assert result.evidence == {
        "replica_state_T": True,
        "lock_on_failed_primary": True,
        "promoted_replica_lacked_key": True,
    }
    assert result.sold == 2, result  # one unit, sold by both holders


async def test_fenced_etcd_sells_exactly_its_stock_across_a_pause(
    core: CoreResources,
    postgres: EmbeddedPostgres,
    etcd: EmbeddedEtcd,
    queries: dict[str, str],
    state_root: Path,
) -> None:
    setup = LockSetup(ETCD_LEASE_FENCED, postgres.url, (), etcd.port, PAUSE_TTL_S, PAUSE_WAIT_S)
    new_item, sold = _lock_items(core.pool, queries)
    workers = Workers(state_root / "locks-test" / "workers.log")
    result = await pause_round(setup, workers, new_item, sold, PAUSE_STOCK, PAUSE_OTHERS, PAUSE_S)
    assert result.evidence["holder_state_T"] and result.evidence["still_T_after_pause"]
    assert result.sold == PAUSE_STOCK, result
    assert result.outcomes.get("fenced", 0) >= 1, result  # the stale holder's write refused


async def test_flashsale_sells_exactly_its_stock_across_a_pause(
    core: CoreResources, postgres: EmbeddedPostgres, state_root: Path
) -> None:
    pool = core.pool
    topic = f"locks-test-{secrets.token_hex(3)}"
    await ensure_leases(pool, topic, 1)

    async def new_item(stock: int) -> str:
        item = f"locks-test-{secrets.token_hex(3)}"
        await upsert_item(pool, item, stock, 1)
        return item

    async def sold(item: str) -> int:
        return await confirmed(pool, item)

    workers = Workers(state_root / "locks-test" / "workers.log", topic)
    setup = LockSetup(FLASHSALE, postgres.url)
    result = await pause_round(setup, workers, new_item, sold, PAUSE_STOCK, PAUSE_OTHERS, PAUSE_S)
    assert result.evidence["holder_state_T"] and result.evidence["still_T_after_pause"]
    assert result.sold == PAUSE_STOCK, result
    assert result.outcomes.get("fenced", 0) >= 1, result
