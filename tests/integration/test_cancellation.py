"""Cancelling a purchase: through the item's partition, units back on sale at once."""

from __future__ import annotations

import secrets
import uuid

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import routes
from gateway.app import create_app
from gateway.hints import ItemHints
from services.resources import CoreResources
from services.schema import PurchaseMessage, purchase_id_for
from services.settings import Settings
from services.stockfilter.returns import announce_returned, returned_units_listener
from services.store.batch import Lease, apply_batch
from services.store.decide import Record
from services.store.leases import acquire_lease
from services.store.purchases import get_purchase
from services.tokens import issue_token
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack
from tests.integration.test_admission_review import new_item, wait_listening
from tests.integration.test_purchase_path import buy, final_state, item


async def new_live_item(
    http: aiohttp.ClientSession, live: LiveStack, stock: int, per_user_limit: int = 1
) -> str:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}",
        json={"stock": stock, "per_user_limit": per_user_limit},
        headers=live.admin_headers,
    ) as response:
        assert response.status == 201
    return item_id


async def bought(http: aiohttp.ClientSession, live: LiveStack, user: str, item_id: str) -> str:
    """A purchase id that came out confirmed."""
    status, body = await buy(http, live, user, uuid.uuid4().hex, item_id)
    assert status == 202, body
    purchase_id = str(body["purchase_id"])
    assert (await final_state(http, live, user, purchase_id))["status"] == "confirmed"
    return purchase_id


async def cancel(
    http: aiohttp.ClientSession, live: LiveStack, purchase_id: str, headers: dict[str, str]
) -> tuple[int, dict[str, object], aiohttp.typedefs.LooseHeaders]:
    url = f"{live.url}/v1/purchases/{purchase_id}/cancel"
    async with http.post(url, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_the_owner_cancels_and_the_unit_is_sold_again(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = await new_live_item(http, live, stock=1)
    purchase_id = await bought(http, live, "canceller", item_id)
    assert (await buy(http, live, "latecomer", uuid.uuid4().hex, item_id))[0] == 409

    status, body, _ = await cancel(http, live, purchase_id, live.user_headers("canceller"))
    assert status == 200, body
    assert body["status"] == "cancelled" and body["purchase_id"] == purchase_id
    assert body["item_id"] == item_id and body["quantity"] == 1 and body["reason"] is None
    assert (await item(http, live, item_id))["sold"] == 0
    shown = await final_state(http, live, "canceller", purchase_id)
    assert shown["status"] == "cancelled"

    again = await cancel(http, live, purchase_id, live.user_headers("canceller"))
    assert again[0] == 200 and again[1] == body

    async def latecomer_buys() -> bool:
        status, answer = await buy(http, live, "latecomer", uuid.uuid4().hex, item_id)
        assert status in (202, 409, 429), answer
        if status != 202:
            return False
        final = await final_state(http, live, "latecomer", str(answer["purchase_id"]))
        assert final["status"] == "confirmed"
        return True

    assert await wait_for(latecomer_buys, timeout_s=30, interval_s=0.6)
    assert (await item(http, live, item_id))["sold"] == 1


async def test_only_the_owner_or_an_admin_cancels(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = await new_live_item(http, live, stock=2)
    purchase_id = await bought(http, live, "owner", item_id)
    status, body, _ = await cancel(http, live, purchase_id, live.user_headers("stranger"))
    assert (status, body["error"]) == (404, "purchase_not_found")
    assert (await cancel(http, live, "p_" + "0" * 32, live.user_headers("owner")))[0] == 404
    assert (await cancel(http, live, purchase_id, {}))[0] == 401
    status, body, _ = await cancel(http, live, purchase_id, live.admin_headers)
    assert status == 200 and body["status"] == "cancelled"
    assert (await item(http, live, item_id))["sold"] == 0


async def test_a_cancel_frees_the_users_quota(live: LiveStack, http: aiohttp.ClientSession) -> None:
    item_id = await new_live_item(http, live, stock=5, per_user_limit=1)
    purchase_id = await bought(http, live, "quota", item_id)
    assert (await cancel(http, live, purchase_id, live.user_headers("quota")))[0] == 200
    await bought(http, live, "quota", item_id)


async def test_a_rejected_purchase_is_not_cancellable(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = await new_live_item(http, live, stock=2, per_user_limit=1)
    # Two keys of one user pass the filter; Postgres rejects one (per-user limit).
    user = f"greedy-{uuid.uuid4().hex[:8]}"  # other tests buy as "greedy" with these keys
    answers = [await buy(http, live, user, f"k{n}", item_id) for n in range(2)]
    states = [await final_state(http, live, user, str(body["purchase_id"])) for _, body in answers]
    (rejected,) = [s for s in states if s["status"] == "rejected"]
    status, body, _ = await cancel(
        http, live, str(rejected["purchase_id"]), live.user_headers(user)
    )
    assert (status, body["error"]) == (409, "not_cancellable")


async def test_a_pending_purchase_is_not_final_and_a_slow_cancel_is_a_503(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No consumer reads this gateway's topic: purchases stay pending, cancels unapplied."""
    monkeypatch.setattr(routes, "CANCEL_WAIT_S", 0.5)
    item_id = await new_item(core, 5)
    lonely = settings.replace(topic=f"lonely-{secrets.token_hex(3)}")
    async with TestClient(TestServer(create_app(lonely))) as client:
        await wait_listening(client.app[routes.GATEWAY].waiters)
        headers = {
            "Authorization": f"Bearer {issue_token(settings.secret, 'waiter', 600)}",
            "Idempotency-Key": secrets.token_hex(4),
        }
        response = await client.post("/v1/purchases", json={"item_id": item_id}, headers=headers)
        purchase_id = (await response.json())["purchase_id"]
        response = await client.post(f"/v1/purchases/{purchase_id}/cancel", headers=headers)
        assert response.status == 409 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == "not_final"

        confirmed = await confirmed_elsewhere(core, settings, item_id, "waiter")
        response = await client.post(f"/v1/purchases/{confirmed}/cancel", headers=headers)
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == "unavailable"
    # Queued, not lost: whoever reads that topic applies it; until then it stands.
    row = await get_purchase(core.pool, confirmed)
    assert row is not None and row.status == "confirmed"


async def confirmed_elsewhere(
    core: CoreResources, settings: Settings, item_id: str, user: str
) -> str:
    """A purchase confirmed by a batch of another topic's partition."""
    purchase_id = purchase_id_for(settings.secret, user, secrets.token_hex(4))
    topic = fresh_id("topic")
    grant = await acquire_lease(core.pool, topic, 0, "test")
    lease = Lease(topic, 0, grant.epoch)
    message = PurchaseMessage(purchase_id, user, "k", item_id, 1, 0, 0)
    async with core.pool.acquire() as conn:
        result = await apply_batch(conn, lease, [Record(0, message)])
    assert [d.status for d in result.decisions.new] == ["confirmed"]
    return purchase_id


async def test_an_announced_item_loses_its_sold_out_hint(core: CoreResources) -> None:
    hints = ItemHints(item_ttl_s=60, sold_out_ttl_s=60)
    item_id = fresh_id()
    hints.mark_sold_out(item_id)
    async with returned_units_listener(core.redis, hints.forget):

        async def forgotten() -> bool:
            # Announced each round: the listener may not be subscribed yet.
            await announce_returned(core.redis, [item_id])
            return not hints.is_sold_out(item_id)

        assert await wait_for(forgotten, timeout_s=20, interval_s=0.1)
