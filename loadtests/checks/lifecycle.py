"""The sale's lifecycle after a run: holds settled, and an event in the outbox for
every status change (design.md, "The sale's lifecycle"). The stock filter's
share is `loadtests.checks.filtercheck`, the events topic's `loadtests.checks.topiccheck`.

Like `loadtests.checks.invariants`, it reads Postgres with its own SQL (invariants.sql):
the check must not share a bug with the code it checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from loadtests.checks.checksql import checker_queries

POLL_S = 0.25
# Statuses reached from confirmed: each has two events, confirmed and itself.
MOVED_ON = ("cancelled", "paid", "expired")
SHOWN = 3
QUERIES = checker_queries("invariants.sql")


async def poll(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Call `check` every POLL_S until it holds or `timeout_s` passed; whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL_S)


async def wait_for_holds(conn: asyncpg.Connection, item_ids: list[str], timeout_s: float) -> int:
    """Wait until no hold of these items is still confirmed (each paid or expired
    by its partition's owner); how many still are when the time is up."""
    left = 0

    async def settled() -> bool:
        nonlocal left
        left = int(await conn.fetchval(QUERIES["unsettled_holds"], item_ids))
        return left == 0

    await poll(settled, timeout_s)
    return left


async def check_events(
    conn: asyncpg.Connection, item_ids: list[str], violations: list[str], publish_wait_s: float
) -> None:
    """Every status a purchase reached has its event `<purchase_id>:<status>` in the
    outbox (confirmed, then the status it moved on to), none other, in order, and
    every event was published (marked once the broker acknowledged it)."""
    missing = await conn.fetch(QUERIES["missing_events"], item_ids, list(MOVED_ON))
    if missing:
        shown = [row["event_id"] for row in missing[:SHOWN]]
        violations.append(f"EVENTS: {len(missing)} status changes have no event (e.g. {shown})")
    stray = await conn.fetch(QUERIES["stray_events"], item_ids, list(MOVED_ON))
    if stray:
        shown = [f"{row['event_id']} (now {row['status']})" for row in stray[:SHOWN]]
        violations.append(
            f"EVENTS: {len(stray)} events name a status their purchase does not have:"
            f" a status moved back or twice (e.g. {shown})"
        )
    disordered = await conn.fetchval(QUERIES["events_before_confirmed"], item_ids)
    if disordered:
        violations.append(f"EVENTS: {disordered} purchases have an event before their confirmed")
    doubled = await conn.fetchval(QUERIES["events_written_twice"], item_ids)
    if doubled:
        violations.append(f"EVENTS: {doubled} status changes were written to the outbox twice")
    unpublished = 0

    async def published() -> bool:
        nonlocal unpublished
        unpublished = int(await conn.fetchval(QUERIES["unpublished_events"], item_ids))
        return unpublished == 0

    if not await poll(published, publish_wait_s):
        violations.append(
            f"EVENTS: {unpublished} events still unpublished after {publish_wait_s:.0f} s"
        )
