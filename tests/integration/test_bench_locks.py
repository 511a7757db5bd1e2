"""The faults of the bench's `locks` phase are real, and the safe designs are safe.

No timing is asserted. What must hold: the paused holder was really stopped
(its /proc state `T`) past the lock's TTL; the failover really promoted a
replica that lacked the lock key the primary had granted; flashsale and the
fenced etcd lock sell exactly their stock across a pause that lets the lock
expire under its holder.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
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
from loadtests.bench.locks.failover import FailoverNodes, failover_round
from loadtests.bench.locks.faults import Workers, pause_round
from loadtests.bench.locks.figures import FAILOVER_TTL_S, PAUSE_S, PAUSE_TTL_S
from loadtests.bench.locks.phase import FAILOVER_WAIT_S, PAUSE_OTHERS, PAUSE_STOCK, PAUSE_WAIT_S
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


DESIGN_KEYS = {
    "library",
    "answered_per_s",
    "oversold_under_pause",
    "oversold_under_failover",
    "stock",
}
DESIGNS = (
    "set_nx_px",
    "watchdog",
    "redlock",
    "pg_advisory",
    "etcd_lease",
    "etcd_lease_fenced",
    "flashsale",
)
CLI_STOCK = 5


@pytest.mark.timeout(300)
def test_bench_json_phases_locks_prints_the_locks_object_of_the_api() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_PARTITIONS"] = "2"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from infra.bench_command import bench; bench(prog_name='flashsale bench')",
            "--json",
            "--phases",
            "locks",
            "--requests",
            "100",
            "--stock",
            str(CLI_STOCK),
            "--lock-rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert "systems" not in report and "apply" not in report  # only the phase asked for
    locks = report["locks"]
    assert tuple(locks) == DESIGNS
    for design, figures in locks.items():
        assert set(figures) >= DESIGN_KEYS, design
        name, version = figures["library"].split(" ")
        assert name and version[0].isdigit(), figures["library"]
        assert figures["answered_per_s"] > 0, design
        assert figures["stock"] == CLI_STOCK, design
        assert isinstance(figures["oversold_under_pause"], int), design
        assert figures["pause"]["fault_evidence"] is True, design
    for design in ("set_nx_px", "watchdog", "redlock"):
        assert isinstance(locks[design]["oversold_under_failover"], int), design
        assert locks[design]["failover"]["fault_evidence"] is True, design
    for design in ("pg_advisory", "etcd_lease", "etcd_lease_fenced", "flashsale"):
        assert locks[design]["oversold_under_failover"] is None, design
        assert locks[design]["failover_not_measured"], design
    for design in ("flashsale", "etcd_lease_fenced"):
        assert locks[design]["oversold_under_pause"] == 0, design
        assert locks[design]["oversold"] == 0, design
        assert locks[design]["confirmed"] == CLI_STOCK, design
