"""Purchase events: every status change, relayed from the outbox in order per item."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import aiohttp

from services.eventlog import EventReader
from services.resources import CoreResources
from tests.conftest import wait_for
from tests.integration.conftest import LiveStack
from tests.integration.test_cancellation import bought, cancel
from tests.integration.test_holds import new_hold_item, pay
from tests.integration.test_purchase_path import buy, final_state

# A pay sent at once lands well before pay_by; the expiry is waited for.
HOLD_S = 5
EVENT_FIELDS = {
    "event_id",
    "purchase_id",
    "user_id",
    "item_id",
    "quantity",
    "status",
    "reason",
    "at",
}


async def outbox(core: CoreResources, item_id: str) -> list[str]:
    rows = await core.pool.fetch(
        "SELECT event_id FROM purchase_events WHERE item_id = $1 ORDER BY seq", item_id
    )
    return [row["event_id"] for row in rows]


async def all_published(core: CoreResources, item_id: str) -> bool:
    left = await core.pool.fetchval(
        "SELECT count(*) FROM purchase_events e JOIN partition_leases l"
        " ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition"
        " WHERE e.item_id = $1 AND e.seq > l.events_published_seq",
        item_id,
    )
    return left == 0


async def topic_events(
    live: LiveStack, item_id: str, expected: list[str]
) -> list[dict[str, object]]:
    """The item's events on the topic, from its start, once every expected one came."""
    seen: list[dict[str, object]] = []
    async with EventReader(
        live.settings.kafka_bootstrap, live.settings.events_topic, from_beginning=True
    ) as reader:

        async def complete() -> bool:
            seen.extend(e for e in await reader.read(0.5) if e["item_id"] == item_id)
            return set(expected) <= {e["event_id"] for e in seen}

        await wait_for(complete, timeout_s=60, interval_s=0)
    return seen


def first_copies(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """What a reader that drops duplicates by event_id keeps."""
    kept: dict[object, dict[str, object]] = {}
    for event in events:
        kept.setdefault(event["event_id"], event)
    return list(kept.values())


async def test_every_change_is_published_once_in_order_per_item(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    item_id = await new_hold_item(http, live, stock=5, hold_s=HOLD_S)
    user = f"evt-{uuid.uuid4().hex[:8]}"
    cancelled = await bought(http, live, f"{user}-a", item_id)
    assert (await cancel(http, live, cancelled, live.user_headers(f"{user}-a")))[0] == 200
    paid = await bought(http, live, f"{user}-b", item_id)
    assert (await pay(http, live, paid, live.admin_headers))[0] == 200
    expiring = await bought(http, live, f"{user}-c", item_id)
    # Two keys of one user pass the filter; Postgres rejects one (per-user limit).
    greedy = f"{user}-d"
    answers = [await buy(http, live, greedy, f"k{n}", item_id) for n in range(2)]
    states = [await final_state(http, live, greedy, str(b["purchase_id"])) for _, b in answers]
    (rejected,) = [s for s in states if s["status"] == "rejected"]
    (kept,) = [s for s in states if s["status"] == "confirmed"]
    unpaid = str(kept["purchase_id"])

    async def expired() -> bool:
        first = await final_state(http, live, f"{user}-c", expiring)
        second = await final_state(http, live, greedy, unpaid)
        return first["status"] == second["status"] == "expired"

    await wait_for(expired, timeout_s=30, interval_s=0.2)
    expected = await outbox(core, item_id)
    by_purchase = {
        cancelled: ["confirmed", "cancelled"],
        paid: ["confirmed", "paid"],
        expiring: ["confirmed", "expired"],
        unpaid: ["confirmed", "expired"],
        str(rejected["purchase_id"]): ["rejected"],
    }
    assert sorted(expected) == sorted(f"{p}:{s}" for p, ss in by_purchase.items() for s in ss)

    events = first_copies(await topic_events(live, item_id, expected))
    assert [e["event_id"] for e in events] == expected
    for event in events:
        assert set(event) == EVENT_FIELDS and event["item_id"] == item_id
        assert event["event_id"] == f"{event['purchase_id']}:{event['status']}"
        assert event["quantity"] == 1 and str(event["at"]).endswith("Z")
    shown = {e["purchase_id"]: [] for e in events}  # type: ignore[var-annotated]
    for event in events:
        shown[event["purchase_id"]].append(event["status"])
    assert shown == by_purchase
    reasons = {e["event_id"]: e["reason"] for e in events}
    assert reasons[f"{rejected['purchase_id']}:rejected"] == "per_user_limit"
    assert reasons[f"{cancelled}:cancelled"] is None
    users = {e["purchase_id"]: e["user_id"] for e in events}
    assert users[paid] == f"{user}-b" and users[unpaid] == greedy
    await wait_for(lambda: all_published(core, item_id), timeout_s=30)


async def test_events_tail_prints_the_events_as_json_lines(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    item_id = await new_hold_item(http, live, stock=2, hold_s=HOLD_S)
    purchase_id = await bought(http, live, f"tail-{uuid.uuid4().hex[:8]}", item_id)
    assert (await pay(http, live, purchase_id, live.admin_headers))[0] == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_KAFKA_BOOTSTRAP"] = live.settings.kafka_bootstrap
    env["FLASHSALE_EVENTS_TOPIC"] = live.settings.events_topic
    command = [sys.executable, "-m", "infra.cli", "events", "tail", "--from-beginning"]
    command += ["--count", "2", "--item", item_id]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event_id"] for e in lines] == [f"{purchase_id}:confirmed", f"{purchase_id}:paid"]
