"""The check after a load-test run: design.md's invariants (`loadtests.checks.invariants`)
once every accepted purchase is final and every hold settled, plus what the run
knows beyond the accepted ids: stock unchanged, per-user limits, one purchase per
idempotency key, untouched users and items, the events, the stock filter.

Like the invariants, it reads Postgres with its own SQL (invariants.sql).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from loadtests.checks.filtercheck import check_filter
from loadtests.checks.invariants import (
    QUERIES,
    InvariantReport,
    check_accepted,
    check_item,
    wait_until_final,
)
from loadtests.checks.lifecycle import check_events, wait_for_holds
from loadtests.checks.topiccheck import check_topic
from loadtests.sale.target import EventsAccess, FilterAccess


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
            report.items.append(await check_item(conn, item_id, report.violations, clean_run))
        await check_accepted(conn, accepted_ids, report.violations)
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
    rows = await conn.fetch(QUERIES["over_user_limit"], item_ids)
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
    rows = await conn.fetch(QUERIES["key_purchases"], list(users), list(idem_keys))
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
        owned = await conn.fetchval(QUERIES["user_prefix_purchases"], prefix)
        if owned:
            violations.append(
                f"{owned} purchases belong to users {prefix}* who sent only bad input"
            )
    for item_id in expected.untouched_items:
        touched = await conn.fetchval(QUERIES["item_purchases"], item_id)
        if touched:
            violations.append(f"{item_id}: {touched} purchases, but only bad input targeted it")
