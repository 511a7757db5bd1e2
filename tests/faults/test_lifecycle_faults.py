"""Holds and events through faults: the outbox relay killed between publish and mark,
and the owner of a partition paused past its session timeout around expiries and pays."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import aiohttp
import asyncpg
import pytest

from infra.embedded.proc import kill_pid, pid_alive
from loadtests.checks.faultcheck import check_fault_run
from loadtests.sale.traffic import run_traffic
from services.eventlog import EventReader
from services.failpoints import CONSUMER_POINTS
from services.resources import open_core
from services.settings import Settings
from services.tokens import issue_token
from tests.conftest import fresh_id, wait_for
from tests.faults.conftest import FaultStack
from tests.faults.test_crash_points import _filter_matches

STOCK = 5


async def outbox(settings: Settings, item_ids: list[str]) -> dict[str, list[str]]:
    """Each item's event ids in outbox order; fails unless every one was published."""
    async with open_core(settings) as core:
        rows = await core.pool.fetch(
            "SELECT e.item_id, e.event_id, e.seq <= l.events_published_seq AS published"
            " FROM purchase_events e JOIN partition_leases l"
            " ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition"
            " WHERE e.item_id = ANY($1::text[]) ORDER BY e.seq",
            item_ids,
        )
        finals = await core.pool.fetch(
            "SELECT purchase_id, status FROM purchases WHERE item_id = ANY($1::text[])", item_ids
        )
    assert all(row["published"] for row in rows)
    # Every purchase's current status has its event.
    assert {f"{r['purchase_id']}:{r['status']}" for r in finals} <= {r["event_id"] for r in rows}
    events: dict[str, list[str]] = {item_id: [] for item_id in item_ids}
    for row in rows:
        events[row["item_id"]].append(row["event_id"])
    return events


async def all_published(settings: Settings, item_ids: list[str]) -> bool:
    async with open_core(settings) as core:
        left = await core.pool.fetchval(
            "SELECT count(*) FROM purchase_events e JOIN partition_leases l"
            " ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition"
            " WHERE e.item_id = ANY($1::text[]) AND e.seq > l.events_published_seq",
            item_ids,
        )
    return left == 0


async def published_marks(settings: Settings) -> dict[int, int]:
    """partition -> the seq up to which its events are published."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT kafka_partition, events_published_seq FROM partition_leases WHERE topic = $1",
            settings.topic,
        )
    finally:
        await conn.close()
    return {row["kafka_partition"]: row["events_published_seq"] for row in rows}


async def on_topic(settings: Settings, expected: dict[str, list[str]]) -> list[dict[str, object]]:
    """The items' events on the topic from its start, once every expected one came."""
    wanted = {event_id for ids in expected.values() for event_id in ids}
    seen: list[dict[str, object]] = []
    async with EventReader(settings.kafka_bootstrap, settings.events_topic, True) as reader:

        async def complete() -> bool:
            seen.extend(e for e in await reader.read(0.5) if e["item_id"] in expected)
            return wanted <= {e["event_id"] for e in seen}

        await wait_for(complete, timeout_s=60, interval_s=0)
    return seen


def assert_in_order(seen: list[dict[str, object]], expected: dict[str, list[str]]) -> None:
    """Dropping duplicates by event_id, each item's expected events come in outbox order."""
    for item_id, ids in expected.items():
        wanted = set(ids)
        firsts: list[object] = []
        for event in seen:
            if event["event_id"] in wanted and event["event_id"] not in firsts:
                firsts.append(event["event_id"])
        assert firsts == ids, item_id


async def test_relay_killed_between_publish_and_mark_loses_no_event(
    fault_stack: FaultStack,
) -> None:
    stack = fault_stack.stack
    for name in list(stack.consumer_pids):
        kill_pid(stack.consumer_pids.pop(name))
    doomed = stack.add_consumer("doomed", failpoint="relay.after_publish")
    items = await fault_stack.create_items(count=2, stock=STOCK)
    outcome = await run_traffic(fault_stack.target, items, duration_s=2, rate_per_s=10)
    await wait_for(lambda: _dead(doomed), timeout_s=60)
    stack.add_consumer("rescuer")
    report = await check_fault_run(stack.settings.database_url, items, outcome.accepted)
    assert report.ok, report.all_violations
    await wait_for(lambda: all_published(stack.settings, items), timeout_s=60)
    expected = await outbox(stack.settings, items)
    assert all(expected.values())
    seen = await on_topic(stack.settings, expected)
    assert_in_order(seen, expected)
    # The round the doomed relay sent and never marked was sent again, same event_id.
    copies = Counter(e["event_id"] for e in seen)
    assert max(copies.values()) >= 2


async def test_broker_restart_with_events_in_flight(fault_stack: FaultStack) -> None:
    """The embedded broker forgets every topic: what the relay had not had
    acknowledged is sent after the restart, and the relay goes on in order."""
    settings = fault_stack.settings
    marks_at_restart: dict[int, int] = {}

    def restart() -> None:
        fault_stack.faults.restart_broker()
        # In the fault's thread, on a loop of its own: what the relay had marked by
        # then was published to the broker that lost it.
        marks_at_restart.update(asyncio.run(published_marks(settings)))

    report, outcome, items = await fault_stack.sale_with_fault(restart)
    assert outcome.accepted, outcome.statuses
    assert report.ok, report.all_violations
    await wait_for(lambda: all_published(settings, items), timeout_s=90)
    await outbox(settings, items)  # every purchase's status has its event
    async with open_core(settings) as core:
        rows = await core.pool.fetch(
            "SELECT item_id, event_id FROM purchase_events"
            " WHERE item_id = ANY($1::text[])"
            " AND seq > ($2::bigint[])[kafka_partition + 1] ORDER BY seq",
            items,
            [marks_at_restart.get(p, 0) for p in range(settings.partitions)],
        )
    assert rows, "no event was relayed after the restart"
    expected: dict[str, list[str]] = {}
    for row in rows:
        expected.setdefault(row["item_id"], []).append(row["event_id"])
    assert_in_order(await on_topic(settings, expected), expected)


async def test_owner_paused_past_its_session_around_expiries_and_pays(
    fault_stack: FaultStack,
) -> None:
    """The item's partition owner sleeps (SIGSTOP) across the holds' pay_by; the
    survivor takes the partition and expires what was not paid; late pays answer
    409 expired; the zombie, awake, changes nothing; nothing paid ever expires."""
    settings = fault_stack.settings
    target = fault_stack.target
    hold_s = 6
    item_id = fresh_id()
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{target.gateway_url}/v1/items/{item_id}",
            json={"stock": 10, "per_user_limit": 1, "hold_s": hold_s},
            headers=admin,
        ) as response:
            assert response.status == 201
        purchases = [await _bought(http, settings, target.gateway_url, item_id) for _ in range(6)]
        to_pay, unpaid = purchases[:3], purchases[3:]
        for purchase_id in to_pay:
            status, body = await _pay(http, target.gateway_url, purchase_id, admin)
            assert (status, body["status"]) == (200, "paid")

        owner = await _owner_of(settings, purchases[0])
        pause = asyncio.create_task(
            asyncio.to_thread(fault_stack.faults.pause_consumer, owner, 14.0)
        )
        # Past pay_by while the owner sleeps: the pays go to its partition and
        # wait for the survivor (503 until it took the partition over). Within a
        # 2 s session the survivor may take over before pay_by: pay only after it.
        await wait_for(lambda: _past_pay_by(settings, unpaid), timeout_s=30, interval_s=0.2)
        for purchase_id in unpaid:

            async def refused(pid: str = purchase_id) -> bool:
                status, body = await _pay(http, target.gateway_url, pid, admin)
                assert status in (409, 503), body
                return status == 409 and body["error"] == "expired"

            await wait_for(refused, timeout_s=90, interval_s=0.5)
        await pause
        owner_pid = fault_stack.stack.consumer_pids[owner]
        for purchase_id in to_pay:
            status, body = await _pay(http, target.gateway_url, purchase_id, admin)
            assert (status, body["status"]) == (200, "paid")

    async def settled() -> bool:
        async with open_core(settings) as core:
            rows = await core.pool.fetch(
                "SELECT purchase_id, status FROM purchases WHERE item_id = $1", item_id
            )
            sold = await core.pool.fetchval("SELECT sold FROM items WHERE item_id = $1", item_id)
            levels = await core.stock.shard_levels(item_id)
        statuses = {row["purchase_id"]: row["status"] for row in rows}
        assert all(statuses[p] == "paid" for p in to_pay), statuses
        assert all(statuses[p] == "expired" for p in unpaid), statuses
        assert sold == len(to_pay)
        return sum(level or 0 for level in levels) == 10 - len(to_pay)

    await wait_for(settled, timeout_s=30, interval_s=0.5)
    await wait_for(lambda: all_published(settings, [item_id]), timeout_s=60)
    expected = await outbox(settings, [item_id])
    assert sorted(s.split(":")[1] for s in expected[item_id]) == sorted(
        ["confirmed"] * 6 + ["paid"] * 3 + ["expired"] * 3
    )
    assert_in_order(await on_topic(settings, expected), expected)
    assert pid_alive(owner_pid)


async def _bought(http: aiohttp.ClientSession, settings: Settings, url: str, item_id: str) -> str:
    user = f"holder-{uuid.uuid4().hex[:8]}"
    headers = {
        "Authorization": f"Bearer {issue_token(settings.secret, user, 600)}",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    async with http.post(f"{url}/v1/purchases", json={"item_id": item_id}, headers=headers) as r:
        assert r.status == 202, await r.text()
        purchase_id = str((await r.json())["purchase_id"])
    async with http.get(f"{url}/v1/purchases/{purchase_id}?wait=30", headers=headers) as r:
        assert (await r.json())["status"] == "confirmed"
    return purchase_id


async def _past_pay_by(settings: Settings, purchase_ids: list[str]) -> bool:
    """By the database's clock, the one the sweep and the pay compare pay_by with."""
    async with open_core(settings) as core:
        passed = await core.pool.fetchval(
            "SELECT bool_and(pay_by < now()) FROM purchases WHERE purchase_id = ANY($1::text[])",
            purchase_ids,
        )
    return bool(passed)


async def _pay(
    http: aiohttp.ClientSession, url: str, purchase_id: str, admin: dict[str, str]
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{url}/v1/purchases/{purchase_id}/pay", headers=admin) as r:
        return r.status, await r.json()


async def _owner_of(settings: Settings, purchase_id: str) -> str:
    async with open_core(settings) as core:
        owner = await core.pool.fetchval(
            "SELECT l.owner FROM purchases AS p JOIN partition_leases AS l"
            " ON l.topic = p.topic AND l.kafka_partition = p.kafka_partition"
            " WHERE p.purchase_id = $1",
            purchase_id,
        )
    assert isinstance(owner, str)
    return owner


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)


@pytest.mark.parametrize("point", CONSUMER_POINTS)
async def test_consumer_killed_at_each_crash_point_around_a_cancel(
    fault_stack: FaultStack, point: str
) -> None:
    """The owner dies before applying a cancel, after committing it, or after giving
    its units back: the next owner applies it once, the unit goes back to the
    filter exactly once, and the cancel's event is written once."""
    stack, settings = fault_stack.stack, fault_stack.settings
    (item_id,) = await fault_stack.create_items(count=1, stock=STOCK)
    headers = {"Authorization": f"Bearer {issue_token(settings.secret, 'canceller', 3600)}"}
    base = fault_stack.target.gateway_url
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/purchases",
            json={"item_id": item_id, "quantity": 1},
            headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
        ) as response:
            assert response.status == 202
            purchase_id = (await response.json())["purchase_id"]
        status_url = f"{base}/v1/purchases/{purchase_id}"
        async with http.get(f"{status_url}?wait=30", headers=headers) as response:
            assert (await response.json())["status"] == "confirmed"
        for name in list(stack.consumer_pids):
            kill_pid(stack.consumer_pids.pop(name))
        doomed = stack.add_consumer("doomed", failpoint=point)
        async with http.post(f"{status_url}/cancel", headers=headers) as response:
            assert response.status in (200, 503), await response.text()
        await wait_for(lambda: _dead(doomed), timeout_s=30)
        stack.add_consumer("rescuer")

        async def cancelled() -> bool:
            async with http.post(f"{status_url}/cancel", headers=headers) as response:
                return response.status == 200 and (await response.json())["status"] == "cancelled"

        await wait_for(cancelled, timeout_s=60, interval_s=1)
    async with open_core(settings) as core:
        sold = await core.pool.fetchval("SELECT sold FROM items WHERE item_id = $1", item_id)
        events = await core.pool.fetch(
            "SELECT event_id FROM purchase_events WHERE purchase_id = $1", purchase_id
        )
    assert sold == 0
    assert sorted(row["event_id"] for row in events) == [
        f"{purchase_id}:cancelled",
        f"{purchase_id}:confirmed",
    ]
    await wait_for(lambda: _filter_matches(fault_stack, item_id, STOCK), timeout_s=30)
