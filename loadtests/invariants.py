"""The invariant check of design.md, run against Postgres after a sale."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from loadtests.lifecycle import (
    EventsAccess,
    FilterAccess,
    check_events,
    check_filter,
    check_topic,
    wait_for_holds,
)

# Every status a purchase reaches once it is decided: a row is final (no longer
# pending) whatever it became after confirmed.
FINAL = ("confirmed", "rejected", "cancelled", "paid", "expired")
# Statuses whose units went back on sale.
RETURNED = ("cancelled", "expired")


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
        "SELECT count(*) FROM purchases WHERE item_id = $1 AND reason = 'sold_out'", item_id
    )
    # Units returned after the last buyer came are rightly unsold: the filter check
    # (every returned unit sold again or back on sale) judges items with returns.
    if clean_run and sold_out and not returned_units and units != item["stock"]:
        violations.append(
            f"{item_id}: UNDERSOLD {units} of {item['stock']} with sold_out rejections"
        )
    # A confirmation after an earlier sold_out is fair once units came back: only
    # confirmations whose event precedes every return of the item are judged.
    unfair = await conn.fetchval(
        "SELECT count(*) FROM purchases r JOIN purchases c"
        " ON c.item_id = r.item_id AND c.log_generation = r.log_generation"
        " AND c.kafka_partition = r.kafka_partition"
        " WHERE r.item_id = $1 AND r.reason = 'sold_out' AND c.status IN ('confirmed', 'paid')"
        " AND c.kafka_offset > r.kafka_offset AND c.quantity >= r.quantity"
        " AND NOT EXISTS (SELECT 1 FROM purchase_events ce JOIN purchase_events back"
        "   ON back.item_id = ce.item_id AND back.status IN ('cancelled', 'expired')"
        "   AND back.seq <= ce.seq"
        "   WHERE ce.event_id = c.purchase_id || ':confirmed')",
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


@dataclass(frozen=True, slots=True)
class SaleExpectations:
    """What a load-test run knows beyond the accepted ids, for `check_sale`."""

    # item id -> the stock the run set; nothing a user sends may change it
    stock: dict[str, int] = field(default_factory=dict)
    # (user id, idempotency key) -> every purchase id the gateway answered for it
    keys: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # user ids starting with one of these (malformed senders) must own no purchase
    untouched_user_prefixes: tuple[str, ...] = ()
    # items only malformed requests targeted: no purchase may exist for them
    untouched_items: tuple[str, ...] = ()
    # where the stock filter lives: given, returned units are looked for in it
    stock_filter: FilterAccess | None = None
    # where the relay publishes: given, the published events are looked for there
    events: EventsAccess | None = None


FINAL_POLL_S = 0.25
# Holds are paid or expired by their partition's owner within a sweep of pay_by.
HOLD_SETTLE_S = 30.0
# The relay publishes within a poll of the commit; a broker may take a while.
PUBLISH_WAIT_S = 30.0
# The consumers settle a batch in Redis right after its commit. Well under the
# time the reconciler takes to repair a drift (3 idle passes of 2 s): the check
# must see a drift the consumers left before the reconciler hides it.
FILTER_SETTLE_S = 2.0
# Reading the events topic from its start to its end offsets.
TOPIC_READ_S = 60.0


async def check_sale(
    database_url: str,
    accepted: Iterable[str],
    expected: SaleExpectations,
    final_wait_s: float = 30.0,
    clean_run: bool = True,
) -> InvariantReport:
    """`check_invariants` after waiting (at most `final_wait_s`) for every accepted
    purchase to be final and every hold paid or expired, plus: stock unchanged,
    per-user limits held, one purchase per idempotency key (the one its answers
    named), untouched users and items, an event for every status change, and
    (given the filter's address) every returned unit sold again or back on sale."""
    accepted_ids = list(dict.fromkeys(accepted))
    item_ids = list(expected.stock)
    conn = await asyncpg.connect(database_url)
    try:
        await wait_until_final(conn, accepted_ids, final_wait_s)
        report = InvariantReport()
        holds = await wait_for_holds(conn, item_ids, HOLD_SETTLE_S)
        if holds:
            report.violations.append(
                f"HOLDS: {holds} holds neither paid nor expired {HOLD_SETTLE_S:.0f} s after the run"
            )
        # First, while the last change is fresh: see the reconciler's note below.
        if expected.stock_filter is not None:
            await check_filter(
                conn, expected.stock_filter, item_ids, report.violations, FILTER_SETTLE_S
            )
        for item_id in expected.stock:
            report.items.append(await _check_item(conn, item_id, report.violations, clean_run))
        await _check_accepted(conn, accepted_ids, report.violations)
        _check_stock_unchanged(report, expected.stock)
        await _check_user_limits(conn, list(expected.stock), report.violations)
        await _check_keys(conn, expected.keys, report.violations)
        await _check_untouched(conn, expected, report.violations)
        await check_events(conn, item_ids, report.violations, PUBLISH_WAIT_S)
        if expected.events is not None:
            await check_topic(conn, expected.events, item_ids, report.violations, TOPIC_READ_S)
    finally:
        await conn.close()
    return report


async def wait_until_final(
    conn: asyncpg.Connection, purchase_ids: list[str], timeout_s: float
) -> int:
    """Poll until every purchase has a final row or the time is up; how many are not final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = set(purchase_ids)
    while waiting:
        rows = await conn.fetch(
            "SELECT purchase_id FROM purchases WHERE purchase_id = ANY($1::text[])"
            " AND status = ANY($2::text[])",
            list(waiting),
            list(FINAL),
        )
        waiting -= {row["purchase_id"] for row in rows}
        if not waiting or loop.time() >= deadline:
            break
        await asyncio.sleep(FINAL_POLL_S)
    return len(waiting)


def _check_stock_unchanged(report: InvariantReport, stock: dict[str, int]) -> None:
    for tally in report.items:
        planned = stock.get(tally.item_id)
        if planned is not None and tally.stock != planned:
            report.violations.append(
                f"{tally.item_id}: stock changed from {planned} to {tally.stock} during the run"
            )


async def _check_user_limits(
    conn: asyncpg.Connection, item_ids: list[str], violations: list[str]
) -> None:
    rows = await conn.fetch(
        "SELECT p.item_id, p.user_id, sum(p.quantity) AS units, i.per_user_limit"
        " FROM purchases p JOIN items i ON i.item_id = p.item_id"
        " WHERE p.item_id = ANY($1::text[]) AND p.status IN ('confirmed', 'paid')"
        " GROUP BY p.item_id, p.user_id, i.per_user_limit"
        " HAVING sum(p.quantity) > i.per_user_limit",
        item_ids,
    )
    for row in rows[:5]:
        violations.append(
            f"{row['item_id']}: user {row['user_id']} holds {row['units']} units,"
            f" above the per-user limit {row['per_user_limit']}"
        )
    if len(rows) > 5:
        violations.append(f"... and {len(rows) - 5} more users above a per-user limit")


async def _check_keys(
    conn: asyncpg.Connection,
    keys: dict[tuple[str, str], tuple[str, ...]],
    violations: list[str],
) -> None:
    """Every retry of one key was answered with one purchase id, and Postgres holds
    at most one purchase for the key: that one."""
    if not keys:
        return
    split = [pair for pair, ids in keys.items() if len(set(ids)) > 1]
    if split:
        violations.append(
            f"KEY: {len(split)} idempotency keys were answered with different purchase ids"
            f" (e.g. {split[0]}: {keys[split[0]]})"
        )
    users, idem_keys = zip(*keys, strict=True)
    rows = await conn.fetch(
        "SELECT p.user_id, p.idempotency_key, p.purchase_id FROM purchases p"
        " JOIN unnest($1::text[], $2::text[]) AS k(user_id, idempotency_key)"
        " ON p.user_id = k.user_id AND p.idempotency_key = k.idempotency_key",
        list(users),
        list(idem_keys),
    )
    stored: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        stored.setdefault((row["user_id"], row["idempotency_key"]), []).append(row["purchase_id"])
    doubled = [pair for pair, ids in stored.items() if len(ids) > 1]
    if doubled:
        violations.append(f"DOUBLE APPLY: {len(doubled)} keys have more than one purchase row")
    mismatched = [pair for pair, ids in stored.items() if keys[pair] and ids[0] not in keys[pair]]
    if mismatched:
        violations.append(
            f"KEY: {len(mismatched)} keys are stored under a purchase id their answers never named"
        )


async def _check_untouched(
    conn: asyncpg.Connection, expected: SaleExpectations, violations: list[str]
) -> None:
    for prefix in expected.untouched_user_prefixes:
        owned = await conn.fetchval(
            "SELECT count(*) FROM purchases WHERE starts_with(user_id, $1)", prefix
        )
        if owned:
            violations.append(
                f"{owned} purchases belong to users {prefix}* who sent only bad input"
            )
    for item_id in expected.untouched_items:
        touched = await conn.fetchval("SELECT count(*) FROM purchases WHERE item_id = $1", item_id)
        if touched:
            violations.append(f"{item_id}: {touched} purchases, but only bad input targeted it")
