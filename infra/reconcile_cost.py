"""What one reconciler pass costs, with N purchases in flight (issue 20 item 3).

    .venv/bin/python -m infra.reconcile_cost --in-flight 1000,20000 [--stale]

Starts its own Postgres and Redis (embedded, free ports), gives Postgres a
history of applied purchases, reserves N purchases of one item (records in
flight, as a selling item holds them while the consumers catch up), then runs
reconciler passes as a consumer's would (the gate, one owner) and prints one
JSON line per case: Postgres CPU (every backend, from /proc) and Redis CPU per
pass, a pass's wall time, and the records whose status it asked Postgres for.
`--stale` admits the records an hour ago: every one is then the republish
check's work, and the pass must look them all up.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.redis import EmbeddedRedis
from loadtests.bench.cpu import own_cpu_s, tree_cpu_s
from services.applygate import ApplyGate
from services.filterrepair import apply_item_write
from services.reconciler import Reconciler
from services.resources import CoreResources, open_core
from services.schema import PurchaseMessage
from services.settings import Settings
from services.stockfilter.keys import active_items_key
from services.store.items import write_item

HISTORY_PURCHASES = 200_000
# Seconds for writing that history on a busy machine (the pool's default is shorter).
HISTORY_TIMEOUT_S = 600.0
RESERVE_CHUNK = 500
WARM_UP_PASSES = 2
# Records younger than this are in flight, older ones the republish check's work.
STALE_S = 600.0


async def history(core: CoreResources) -> None:
    """Applied purchases of other items: the table a status lookup probes."""
    async with core.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO items (item_id, stock, sold) VALUES ('history', $1, $1)"
            " ON CONFLICT DO NOTHING",
            HISTORY_PURCHASES,
            timeout=HISTORY_TIMEOUT_S,
        )
        await conn.execute(
            "INSERT INTO purchases (purchase_id, user_id, idempotency_key, item_id, quantity,"
            " status, kafka_partition, kafka_offset, log_generation, admitted_at, topic)"
            " SELECT 'h' || g, 'u' || g, 'k', 'history', 1, 'confirmed', 0, g, 0, now(),"
            " 'purchases' FROM generate_series(1, $1) AS g ON CONFLICT DO NOTHING",
            HISTORY_PURCHASES,
            timeout=HISTORY_TIMEOUT_S,
        )


async def in_flight(core: CoreResources, purchases: int, stale: bool) -> str:
    """An item holding `purchases` reservation records; returns its id."""
    item_id = f"cost-{secrets.token_hex(4)}"
    await apply_item_write(core, await write_item(core.pool, item_id, purchases * 2, 1))
    await core.activity.mark(item_id, force=True)
    admitted_ms = int((time.time() - (3600 if stale else 0)) * 1000)

    async def reserve(n: int) -> None:
        pid = f"p_{item_id}_{n}"
        message = PurchaseMessage(pid, f"u{n}", "k", item_id, 1, 0, admitted_ms)
        await core.stock.reserve(
            item_id, pid, 1, lambda shard: dataclasses.replace(message, shard=shard).encode()
        )

    for start in range(0, purchases, RESERVE_CHUNK):
        stop = min(start + RESERVE_CHUNK, purchases)
        await asyncio.gather(*(reserve(n) for n in range(start, stop)))
    return item_id


async def measure(
    core: CoreResources, pg_pid: int, redis_pid: int, purchases: int, passes: int, stale: bool
) -> dict[str, object]:
    item_id = await in_flight(core, purchases, stale)
    gate = ApplyGate()
    reconciler = Reconciler(core, None, STALE_S, gate=gate)
    for _ in range(WARM_UP_PASSES):
        await reconciler.run_once()
    pg_before, redis_before = tree_cpu_s(pg_pid), own_cpu_s(redis_pid)
    started, cpu_started, gate_started = time.perf_counter(), time.process_time(), gate.exclusive_s
    looked_up = 0
    for _ in range(passes):
        looked_up += (await reconciler.run_once()).looked_up
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    pg_s, redis_s = tree_cpu_s(pg_pid) - pg_before, own_cpu_s(redis_pid) - redis_before
    await core.redis.zrem(active_items_key(), item_id)  # the next case measures its own
    return {
        "in_flight": purchases,
        "stale": stale,
        "passes": passes,
        "postgres_cpu_ms_per_pass": round(pg_s * 1000 / passes, 2),
        "redis_cpu_ms_per_pass": round(redis_s * 1000 / passes, 2),
        "reconciler_cpu_ms_per_pass": round(cpu_s * 1000 / passes, 2),
        "pass_ms": round(wall_s * 1000 / passes, 2),
        # How long a consumer's batches wait on this pass (its gate held exclusively).
        "gate_held_ms_per_pass": round((gate.exclusive_s - gate_started) * 1000 / passes, 2),
        "looked_up_per_pass": looked_up // passes,
    }


async def run(
    postgres: EmbeddedPostgres, redis: EmbeddedRedis, cases: list[int], passes: int, stale: bool
) -> None:
    settings = Settings.from_env(
        {}, database_url=postgres.url, redis_url=redis.url, state_dir=postgres.root.parent
    )
    async with open_core(settings, run_migrations=True) as core:
        await history(core)
        pg_pid, redis_pid = postgres.pid(), redis.nodes[0].pid
        assert pg_pid is not None and redis_pid is not None
        for purchases in cases:
            result = await measure(core, pg_pid, redis_pid, purchases, passes, stale)
            print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", default="1000,20000", help="comma-separated cases")
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--stale", action="store_true", help="records admitted an hour ago")
    args = parser.parse_args()
    cases = [int(n) for n in args.in_flight.split(",")]
    root = Path(tempfile.mkdtemp(prefix="reconcile-cost-"))
    root.chmod(0o755)  # the postgres user must reach its data folder
    postgres = EmbeddedPostgres(root / "postgres", fsync=False)
    redis = EmbeddedRedis(root / "redis")
    postgres.start()
    redis.start()
    try:
        asyncio.run(run(postgres, redis, cases, args.passes, args.stale))
    finally:
        redis.stop()
        postgres.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
