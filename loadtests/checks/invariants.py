"""The invariant check of design.md, run against Postgres after a sale: no oversell,
sold == confirmed units, every accepted purchase final, first come first served.
`loadtests.checks.salecheck` adds what a load-test run knows beyond that.

Its SQL is its own, in invariants.sql, on purpose instead of `services.store`'s
named queries: the check must not trust (and share a bug with) the store it checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from loadtests.checks.checksql import checker_queries

QUERIES = checker_queries("invariants.sql")
# Every status a purchase reaches once it is decided: a row is final (no longer
# pending) whatever it became after confirmed.
FINAL = ("confirmed", "rejected", "cancelled", "paid", "expired")
# Statuses whose units went back on sale.
RETURNED = ("cancelled", "expired")
FINAL_POLL_S = 0.25


@dataclass
class ItemTally:
    item_id: str
    stock: int
    sold: int
    confirmed_units: int
    confirmed: int
    rejected: int
    cancelled: int = 0
    paid: int = 0
    expired: int = 0
    # Units that went back on sale: those of cancelled and expired purchases.
    returned_units: int = 0


@dataclass
class InvariantReport:
    items: list[ItemTally] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


async def check_invariants(
    database_url: str,
    item_ids: Iterable[str],
    accepted: Iterable[str] = (),
    clean_run: bool = False,
) -> InvariantReport:
    """Oversell, sold == confirmed, every accepted purchase final, FCFS, and, after a
    clean run with demand >= stock, confirmed == stock."""
    report = InvariantReport()
    conn = await asyncpg.connect(database_url)
    try:
        for item_id in item_ids:
            report.items.append(await check_item(conn, item_id, report.violations, clean_run))
        await check_accepted(conn, list(accepted), report.violations)
    finally:
        await conn.close()
    return report


async def check_item(
    conn: asyncpg.Connection, item_id: str, violations: list[str], clean_run: bool
) -> ItemTally:
    item = await conn.fetchrow(QUERIES["item_row"], item_id)
    if item is None:
        violations.append(f"{item_id}: item missing")
        return ItemTally(item_id, 0, 0, 0, 0, 0)
    rows = await conn.fetch(QUERIES["status_counts"], item_id)
    by_status = {row["status"]: (row["n"], row["units"]) for row in rows}
    confirmed, units = by_status.get("confirmed", (0, 0))
    # A paid purchase (a hold paid in time) keeps its units sold.
    paid, paid_units = by_status.get("paid", (0, 0))
    confirmed, units = confirmed + paid, units + paid_units
    rejected = by_status.get("rejected", (0, 0))[0]
    cancelled, cancelled_units = by_status.get("cancelled", (0, 0))
    expired, expired_units = by_status.get("expired", (0, 0))
    returned_units = cancelled_units + expired_units
    tally = ItemTally(
        item_id,
        item["stock"],
        item["sold"],
        units,
        confirmed,
        rejected,
        cancelled,
        paid,
        expired,
        returned_units,
    )
    if units > item["stock"]:
        violations.append(f"{item_id}: OVERSOLD {units} confirmed units > stock {item['stock']}")
    if units != item["sold"]:
        # Every purchase ever confirmed added its units to sold, and each cancel or
        # expiry took them away once: below, units went back twice; above, never.
        why = "units returned twice" if item["sold"] < units else "units never returned"
        violations.append(
            f"{item_id}: sold {item['sold']} != confirmed units {units} ({why}; "
            f"{returned_units} units of cancelled and expired purchases)"
        )
    sold_out = by_status.get("rejected", (0, 0))[0] and await conn.fetchval(
        QUERIES["sold_out_count"], item_id
    )
    # Units returned after the last buyer came are rightly unsold: the filter check
    # (every returned unit sold again or back on sale) judges items with returns.
    if clean_run and sold_out and not returned_units and units != item["stock"]:
        violations.append(
            f"{item_id}: UNDERSOLD {units} of {item['stock']} with sold_out rejections"
        )
    # A confirmation after an earlier sold_out is fair once units came back: only
    # confirmations whose event precedes every return of the item are judged.
    unfair = await conn.fetchval(QUERIES["unfair_confirmations"], item_id)
    if clean_run and unfair:
        violations.append(f"{item_id}: {unfair} confirmations overtook an earlier sold-out request")
    return tally


async def check_accepted(
    conn: asyncpg.Connection, accepted: list[str], violations: list[str]
) -> None:
    if not accepted:
        return
    found = await conn.fetch(QUERIES["purchase_statuses"], accepted)
    final = {row["purchase_id"] for row in found if row["status"] in FINAL}
    lost = [pid for pid in set(accepted) if pid not in final]
    if lost:
        violations.append(
            f"LOST: {len(lost)} accepted purchases never reached a final state (e.g. {lost[:3]})"
        )


async def wait_until_final(
    conn: asyncpg.Connection, purchase_ids: list[str], timeout_s: float
) -> int:
    """Poll until every purchase has a final row or the time is up; how many are not final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = set(purchase_ids)
    while waiting:
        rows = await conn.fetch(QUERIES["final_among"], list(waiting), list(FINAL))
        waiting -= {row["purchase_id"] for row in rows}
        if not waiting or loop.time() >= deadline:
            break
        await asyncio.sleep(FINAL_POLL_S)
    return len(waiting)
