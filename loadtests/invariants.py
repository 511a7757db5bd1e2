"""The invariant check of design.md, run against Postgres after a sale."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

FINAL = ("confirmed", "rejected")


@dataclass
class ItemTally:
    item_id: str
    stock: int
    sold: int
    confirmed_units: int
    confirmed: int
    rejected: int


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
            report.items.append(await _check_item(conn, item_id, report.violations, clean_run))
        await _check_accepted(conn, list(accepted), report.violations)
    finally:
        await conn.close()
    return report


async def _check_item(
    conn: asyncpg.Connection, item_id: str, violations: list[str], clean_run: bool
) -> ItemTally:
    item = await conn.fetchrow("SELECT stock, sold FROM items WHERE item_id = $1", item_id)
    if item is None:
        violations.append(f"{item_id}: item missing")
        return ItemTally(item_id, 0, 0, 0, 0, 0)
    rows = await conn.fetch(
        "SELECT status, count(*) AS n, coalesce(sum(quantity), 0) AS units "
        "FROM purchases WHERE item_id = $1 GROUP BY status",
        item_id,
    )
    by_status = {row["status"]: (row["n"], row["units"]) for row in rows}
    confirmed, units = by_status.get("confirmed", (0, 0))
    rejected = by_status.get("rejected", (0, 0))[0]
    tally = ItemTally(item_id, item["stock"], item["sold"], units, confirmed, rejected)
    if units > item["stock"]:
        violations.append(f"{item_id}: OVERSOLD {units} confirmed units > stock {item['stock']}")
    if units != item["sold"]:
        violations.append(f"{item_id}: sold {item['sold']} != confirmed units {units}")
    sold_out = by_status.get("rejected", (0, 0))[0] and await conn.fetchval(
        "SELECT count(*) FROM purchases WHERE item_id = $1 AND reason = 'sold_out'", item_id
    )
    if clean_run and sold_out and units != item["stock"]:
        violations.append(
            f"{item_id}: UNDERSOLD {units} of {item['stock']} with sold_out rejections"
        )
    unfair = await conn.fetchval(
        "SELECT count(*) FROM purchases r JOIN purchases c"
        " ON c.item_id = r.item_id AND c.log_generation = r.log_generation"
        " AND c.kafka_partition = r.kafka_partition"
        " WHERE r.item_id = $1 AND r.reason = 'sold_out' AND c.status = 'confirmed'"
        " AND c.kafka_offset > r.kafka_offset AND c.quantity >= r.quantity",
        item_id,
    )
    if clean_run and unfair:
        violations.append(f"{item_id}: {unfair} confirmations overtook an earlier sold-out request")
    return tally


async def _check_accepted(
    conn: asyncpg.Connection, accepted: list[str], violations: list[str]
) -> None:
    if not accepted:
        return
    found = await conn.fetch(
        "SELECT purchase_id, status FROM purchases WHERE purchase_id = ANY($1::text[])", accepted
    )
    final = {row["purchase_id"] for row in found if row["status"] in FINAL}
    lost = [pid for pid in set(accepted) if pid not in final]
    if lost:
        violations.append(
            f"LOST: {len(lost)} accepted purchases never reached a final state (e.g. {lost[:3]})"
        )
