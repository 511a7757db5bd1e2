"""Holds: paid or expired, decided by the item's partition owner in log order."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import routes
from gateway.app import create_app
from services.errors import FencedError
from services.reconciler import apply_item_write
from services.resources import CoreResources
from services.schema import PurchaseMessage
from services.settings import Settings
from services.store.batch import Lease, apply_batch
from services.store.decide import Record
from services.store.holds import expire_due
from services.store.items import SaleTerms, get_item, write_item
from services.store.leases import acquire_lease
from services.store.purchases import get_purchase, item_counts
from services.tokens import issue_token
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack
from tests.integration.test_admission_review import new_item, wait_listening
from tests.integration.test_cancellation import bought, cancel, new_live_item
from tests.integration.test_purchase_path import buy, final_state, item

# Long enough that a pay sent at once is applied before pay_by on a busy machine.
PAYABLE_HOLD_S = 10
# Short: the test waits for the expiry.
SHORT_HOLD_S = 1


async def new_hold_item(
    http: aiohttp.ClientSession, live: LiveStack, stock: int, hold_s: int
) -> str:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}",
        json={"stock": stock, "per_user_limit": 1, "hold_s": hold_s},
        headers=live.admin_headers,
    ) as response:
        assert response.status == 201
    return item_id


async def pay(
    http: aiohttp.ClientSession, live: LiveStack, purchase_id: str, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{live.url}/v1/purchases/{purchase_id}/pay", headers=headers) as r:
        return r.status, await r.json()


async def confirmed_event_at(core: CoreResources, purchase_id: str) -> datetime:
    at = await core.pool.fetchval(
        "SELECT at FROM purchase_events WHERE event_id = $1", f"{purchase_id}:confirmed"
    )
    assert isinstance(at, datetime)
    return at


async def db_is_past(core: CoreResources, moment: datetime) -> bool:
    return bool(await core.pool.fetchval("SELECT now() > $1", moment))


async def filter_holds(core: CoreResources, item_id: str, units: int) -> bool:
    """No reservation records left, and the filter holds exactly `units`."""
    levels = await core.stock.shard_levels(item_id)
    records = await core.stock.reservations(item_id)
    return not any(records.values()) and sum(level or 0 for level in levels) == units


async def test_a_hold_paid_in_time_is_paid_and_never_expires(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    item_id = await new_hold_item(http, live, stock=2, hold_s=PAYABLE_HOLD_S)
    purchase_id = await bought(http, live, "payer", item_id)
    shown = await final_state(http, live, "payer", purchase_id)
    row = await get_purchase(core.pool, purchase_id)
    assert row is not None and row.pay_by is not None
    # pay_by is the confirmation's time (its transaction's clock) plus hold_s.
    confirmed_at = await confirmed_event_at(core, purchase_id)
    assert (row.pay_by - confirmed_at).total_seconds() == PAYABLE_HOLD_S
    assert shown["pay_by"] == row.pay_by.isoformat().replace("+00:00", "Z")

    status, body = await pay(http, live, purchase_id, live.admin_headers)
    assert status == 200, body
    assert body["status"] == "paid" and body["purchase_id"] == purchase_id
    assert body["pay_by"] == shown["pay_by"]
    assert await pay(http, live, purchase_id, live.admin_headers) == (200, body)
    assert (await final_state(http, live, "payer", purchase_id))["status"] == "paid"
    status, body, _ = await cancel(http, live, purchase_id, live.user_headers("payer"))
    assert (status, body["error"]) == (409, "not_cancellable")

    # Well past pay_by and a few expiry sweeps: still paid, its unit still sold.
    await wait_for(lambda: db_is_past(core, row.pay_by + (row.pay_by - confirmed_at) / 5), 60)
    assert (await final_state(http, live, "payer", purchase_id))["status"] == "paid"
    assert (await item(http, live, item_id))["sold"] == 1
    await wait_for(lambda: filter_holds(core, item_id, 1), timeout_s=20)


async def test_an_unpaid_hold_expires_and_its_unit_is_sold_again(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    item_id = await new_hold_item(http, live, stock=1, hold_s=SHORT_HOLD_S)
    purchase_id = await bought(http, live, "slowpayer", item_id)
    assert (await buy(http, live, "waiting", uuid.uuid4().hex, item_id))[0] == 409

    async def expired() -> bool:
        shown = await final_state(http, live, "slowpayer", purchase_id)
        return shown["status"] == "expired"

    await wait_for(expired, timeout_s=30, interval_s=0.2)
    assert (await get_item(core.pool, item_id)).sold == 0
    assert await item_counts(core.pool, item_id) == {"expired": (1, 1)}
    # Postgres and the filter agree: the unit is back, exactly once.
    await wait_for(lambda: filter_holds(core, item_id, 1), timeout_s=20)

    status, body = await pay(http, live, purchase_id, live.admin_headers)
    assert (status, body["error"]) == (409, "expired")
    status, body, _ = await cancel(http, live, purchase_id, live.user_headers("slowpayer"))
    assert (status, body["error"]) == (409, "not_cancellable")

    async def sold_again() -> str | None:
        status, answer = await buy(http, live, "waiting", uuid.uuid4().hex, item_id)
        assert status in (202, 409, 429), answer
        if status != 202:
            return None
        final = await final_state(http, live, "waiting", str(answer["purchase_id"]))
        assert final["status"] == "confirmed"
        return str(answer["purchase_id"])

    again = await wait_for(sold_again, timeout_s=30, interval_s=0.6)
    assert (await final_state(http, live, "slowpayer", purchase_id))["status"] == "expired"
    # The unit sold again is on hold too: it expires in its turn, and the unit is
    # back once more (waited for, so that no later test sees it change).
    await wait_for(lambda: _expired(http, live, "waiting", again), timeout_s=30, interval_s=0.2)
    assert await item_counts(core.pool, item_id) == {"expired": (2, 2)}
    await wait_for(lambda: filter_holds(core, item_id, 1), timeout_s=20)


async def _expired(http: aiohttp.ClientSession, live: LiveStack, user: str, pid: str) -> bool:
    return (await final_state(http, live, user, pid))["status"] == "expired"


async def test_pay_answers_for_every_other_status(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    plain = await new_live_item(http, live, stock=3)
    purchase_id = await bought(http, live, "plainpayer", plain)
    status, body = await pay(http, live, purchase_id, live.admin_headers)
    assert (status, body["error"]) == (409, "not_on_hold")

    held = await new_hold_item(http, live, stock=3, hold_s=PAYABLE_HOLD_S)
    purchase_id = await bought(http, live, "canceller2", held)
    assert (await cancel(http, live, purchase_id, live.user_headers("canceller2")))[0] == 200
    status, body = await pay(http, live, purchase_id, live.admin_headers)
    assert (status, body["error"]) == (409, "not_payable")

    # Two keys of one user pass the filter; Postgres rejects one (per-user limit).
    user = f"greedy-{uuid.uuid4().hex[:8]}"
    answers = [await buy(http, live, user, f"k{n}", held) for n in range(2)]
    states = [await final_state(http, live, user, str(b["purchase_id"])) for _, b in answers]
    (rejected,) = [s for s in states if s["status"] == "rejected"]
    status, body = await pay(http, live, str(rejected["purchase_id"]), live.admin_headers)
    assert (status, body["error"]) == (409, "not_payable")

    (confirmed,) = [s for s in states if s["status"] == "confirmed"]
    owner = live.user_headers(user)
    status, body = await pay(http, live, str(confirmed["purchase_id"]), owner)
    assert (status, body["error"]) == (403, "forbidden")
    assert (await pay(http, live, str(confirmed["purchase_id"]), {}))[0] == 401
    status, body = await pay(http, live, "p_" + "0" * 32, live.admin_headers)
    assert (status, body["error"]) == (404, "purchase_not_found")
    # Paid, so that it does not expire during a later test.
    assert (await pay(http, live, str(confirmed["purchase_id"]), live.admin_headers))[0] == 200


async def test_pay_of_a_pending_purchase_is_not_final(
    settings: Settings, core: CoreResources, live: LiveStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No consumer reads this gateway's topic: purchases stay pending (until the
    live consumers' reconciler republishes them to theirs)."""
    monkeypatch.setattr(routes, "CANCEL_WAIT_S", 0.5)
    item_id = await new_item(core, 5)
    lonely = settings.replace(topic=f"lonely-{secrets.token_hex(3)}")
    async with TestClient(TestServer(create_app(lonely))) as client:
        await wait_listening(client.app[routes.GATEWAY].waiters)
        headers = {
            "Authorization": f"Bearer {issue_token(settings.secret, 'pender', 600)}",
            "Idempotency-Key": secrets.token_hex(4),
        }
        response = await client.post("/v1/purchases", json={"item_id": item_id}, headers=headers)
        purchase_id = (await response.json())["purchase_id"]
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        response = await client.post(f"/v1/purchases/{purchase_id}/pay", headers=admin)
        assert response.status == 409 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == "not_final"

    # The live consumers' reconciler republishes the stale reservation to their
    # topic: the purchase is applied there (waited for, so that it lands in no
    # other test's snapshot).
    async def applied() -> bool:
        return await get_purchase(core.pool, purchase_id) is not None

    await wait_for(applied, timeout_s=60, interval_s=0.2)


# The owner's decisions, driven batch by batch on a topic no consumer reads (so no
# sweep runs there but the test's own).


async def hold_item(core: CoreResources, stock: int, hold_s: int) -> str:
    item_id = fresh_id()
    written = await write_item(core.pool, item_id, stock, 1, SaleTerms(hold_s=hold_s))
    # Its filter too, as an admin write does: other tests may find the item
    # (the dashboard lists recent items) and buy it.
    await apply_item_write(core, written)
    return item_id


async def own_lease(core: CoreResources) -> Lease:
    topic = fresh_id("topic")
    grant = await acquire_lease(core.pool, topic, 0, "test")
    return Lease(topic, 0, grant.epoch)


def purchase(item_id: str, user: str, offset: int) -> Record:
    return Record(offset, PurchaseMessage(f"p_{item_id}_{user}", user, "k", item_id, 1, 0, 0))


def pay_of(record: Record, offset: int) -> Record:
    m = record.message
    return Record(offset, PurchaseMessage.pay(m.purchase_id, m.user_id, m.item_id, 1, 0))


async def status_of(core: CoreResources, record: Record) -> str:
    row = await get_purchase(core.pool, record.message.purchase_id)
    assert row is not None
    return row.status


async def test_a_late_pay_expires_the_purchase_before_any_sweep(core: CoreResources) -> None:
    item_id = await hold_item(core, stock=1, hold_s=SHORT_HOLD_S)
    lease = await own_lease(core)
    first = purchase(item_id, "late", 0)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, [first])
        row = await get_purchase(core.pool, first.message.purchase_id)
        assert row is not None and row.pay_by is not None
        await wait_for(lambda: db_is_past(core, row.pay_by), timeout_s=30)
        # The pay comes first in the log after pay_by: it expires the purchase, and
        # the unit it frees sells to the purchase after it in the same batch.
        second = purchase(item_id, "next", 2)
        result = await apply_batch(conn, lease, [pay_of(first, 1), second])
    assert [t.purchase_id for t in result.decisions.returned] == [first.message.purchase_id]
    assert [d.status for d in result.decisions.new] == ["confirmed"]
    assert await status_of(core, first) == "expired"
    assert (await get_item(core.pool, item_id)).sold == 1
    events = await core.pool.fetch(
        "SELECT event_id FROM purchase_events WHERE item_id = $1 ORDER BY seq", item_id
    )
    assert [e["event_id"] for e in events] == [
        f"{first.message.purchase_id}:confirmed",
        f"{first.message.purchase_id}:expired",
        f"{second.message.purchase_id}:confirmed",
    ]


async def test_a_paid_hold_is_skipped_by_the_sweep_and_an_unpaid_one_expires_once(
    core: CoreResources,
) -> None:
    item_id = await hold_item(core, stock=2, hold_s=SHORT_HOLD_S)
    lease = await own_lease(core)
    paid, unpaid = purchase(item_id, "paid", 0), purchase(item_id, "unpaid", 1)
    async with core.pool.acquire() as conn:
        result = await apply_batch(conn, lease, [paid, unpaid, pay_of(paid, 2)])
        assert result.decisions.final_in_batch == {paid.message.purchase_id: "paid"}
        row = await get_purchase(core.pool, unpaid.message.purchase_id)
        assert row is not None and row.pay_by is not None
        await wait_for(lambda: db_is_past(core, row.pay_by), timeout_s=30)
        expired = await expire_due(conn, lease)
        assert [t.purchase_id for t in expired] == [unpaid.message.purchase_id]
        assert await expire_due(conn, lease) == []
        # A pay after the expiry changes nothing.
        late = await apply_batch(conn, lease, [pay_of(unpaid, 3)])
        assert late.decisions.applied("paid", "expired") == []
    assert await status_of(core, paid) == "paid"
    assert await status_of(core, unpaid) == "expired"
    assert (await get_item(core.pool, item_id)).sold == 1
    statuses = await core.pool.fetch(
        "SELECT status FROM purchase_events WHERE purchase_id = $1 ORDER BY seq",
        paid.message.purchase_id,
    )
    assert [s["status"] for s in statuses] == ["confirmed", "paid"]


async def test_a_fenced_owner_expires_nothing(core: CoreResources) -> None:
    item_id = await hold_item(core, stock=1, hold_s=SHORT_HOLD_S)
    zombie = await own_lease(core)
    record = purchase(item_id, "fenced", 0)
    async with core.pool.acquire() as conn:
        await apply_batch(conn, zombie, [record])
        row = await get_purchase(core.pool, record.message.purchase_id)
        assert row is not None and row.pay_by is not None
        await wait_for(lambda: db_is_past(core, row.pay_by), timeout_s=30)
        newer = await acquire_lease(core.pool, zombie.topic, 0, "the new owner")
        with pytest.raises(FencedError):
            await expire_due(conn, zombie)
        assert await status_of(core, record) == "confirmed"
        # The new owner expires it.
        expired = await expire_due(conn, Lease(zombie.topic, 0, newer.epoch))
    assert [t.purchase_id for t in expired] == [record.message.purchase_id]
    assert (await get_item(core.pool, item_id)).sold == 0
