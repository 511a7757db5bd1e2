"""The invariant check after a run with faults (design.md, invariants 1, 2, 3, 5).

Its SQL is its own, in faultcheck.sql, on purpose instead of `services.store`'s
named queries: the check must not trust the store it checks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

from loadtests.checks.checksql import checker_queries
from loadtests.checks.invariants import InvariantReport, check_invariants

FINAL_BOUND_S = 30.0
POLL_S = 0.25
QUERIES = checker_queries("faultcheck.sql")


@dataclass
class FaultReport:
    invariants: InvariantReport
    violations: list[str] = field(default_factory=list)
    slowest_final_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.invariants.ok and not self.violations

    @property
    def all_violations(self) -> list[str]:
        return [*self.invariants.violations, *self.violations]


async def wait_for_finals(
    database_url: str, accepted: dict[str, float], bound_s: float = FINAL_BOUND_S
) -> tuple[set[str], float]:
    """Wait until every accepted purchase is final or the bound passed since the
    last acceptance; returns (still missing, slowest acceptance-to-final seconds)."""
    conn = await asyncpg.connect(database_url)
    try:
        last_accepted = max(accepted.values(), default=time.time())
        deadline = max(last_accepted + bound_s, time.time() + 1)
        missing = set(accepted)
        applied: dict[str, float] = {}
        while missing and time.time() < deadline:
            rows = await conn.fetch(QUERIES["applied_at"], list(missing))
            for row in rows:
                applied[row["purchase_id"]] = float(row["at"])
            missing -= set(applied)
            if missing:
                await asyncio.sleep(POLL_S)
        slowest = max((applied[p] - accepted[p] for p in applied), default=0.0)
        return missing, slowest
    finally:
        await conn.close()


async def fencing_violations(database_url: str, item_ids: list[str]) -> int:
    """Rows applied at a later offset under an older lease epoch: a zombie committed."""
    conn = await asyncpg.connect(database_url)
    try:
        count = await conn.fetchval(QUERIES["fencing_violations"], item_ids)
        return int(count)
    finally:
        await conn.close()


async def check_fault_run(
    database_url: str,
    item_ids: list[str],
    accepted: dict[str, float],
    inconsistent_ids: list[tuple[str, str]] | None = None,
    bound_s: float = FINAL_BOUND_S,
) -> FaultReport:
    missing, slowest = await wait_for_finals(database_url, accepted, bound_s)
    report = FaultReport(await check_invariants(database_url, item_ids, list(accepted)))
    report.slowest_final_s = slowest
    if missing:
        report.violations.append(
            f"LOST: {len(missing)} accepted purchases not final within {bound_s:.0f}s"
        )
    if slowest > bound_s:
        report.violations.append(f"SLOW: a purchase took {slowest:.1f}s to become final")
    zombies = await fencing_violations(database_url, item_ids)
    if zombies:
        report.violations.append(f"ZOMBIE: {zombies} rows applied under a stale epoch")
    if inconsistent_ids:
        report.violations.append(
            f"IDEMPOTENCY: {len(inconsistent_ids)} requests got different purchase ids"
        )
    return report
