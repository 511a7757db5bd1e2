"""The purchase path end to end: real gateway and consumer processes, real services."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from loadtests.checks.invariants import check_invariants
from loadtests.sale.admin import create_item
from loadtests.sale.sale import run_sale
from loadtests.sale.target import Target
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack


async def buy(
    http: aiohttp.ClientSession, live: LiveStack, user: str, key: str, item_id: str, qty: int = 1
) -> tuple[int, dict[str, object]]:
    async with http.post(
        f"{live.url}/v1/purchases",
        json={"item_id": item_id, "quantity": qty},
        headers=live.user_headers(user, key),
    ) as response:
        body = await response.json()
        if response.status == 429:
            assert body["error"] == "rate_limited" and int(response.headers["Retry-After"]) >= 1
        return response.status, body


async def final_state(
    http: aiohttp.ClientSession, live: LiveStack, user: str, purchase_id: str
) -> dict[str, object]:
    url = f"{live.url}/v1/purchases/{purchase_id}?wait=30"
    async with http.get(url, headers=live.user_headers(user)) as response:
        assert response.status == 200
        body: dict[str, object] = await response.json()
        return body


async def item(http: aiohttp.ClientSession, live: LiveStack, item_id: str) -> dict[str, int]:
    async with http.get(f"{live.url}/v1/items/{item_id}") as response:
        assert response.status == 200
        body: dict[str, int] = await response.json()
        return body


async def test_thousands_of_buyers_get_exactly_the_stock(live: LiveStack) -> None:
    item_id = fresh_id()
    target = Target(live.url, live.settings.admin_token, live.settings.secret)
    async with aiohttp.ClientSession() as session:
        await create_item(session, target, item_id, 100)
    outcome = await run_sale(target, item_id, buyers=3000)
    assert set(outcome.statuses) <= {202, 409}
    assert outcome.statuses[202] == 100
    assert outcome.final == {"confirmed": 100}
    report = await check_invariants(
        live.settings.database_url, [item_id], outcome.accepted, clean_run=True
    )
    assert report.ok, report.violations
    assert report.items[0].sold == report.items[0].confirmed_units == 100


async def test_the_same_request_many_times_makes_one_purchase(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}", json={"stock": 5}, headers=live.admin_headers
    ) as response:
        assert response.status == 201
    key = uuid.uuid4().hex
    answers = await asyncio.gather(*(buy(http, live, "dup-user", key, item_id) for _ in range(30)))
    # Past the per-user rate limit a copy is answered 429; every admitted copy names one purchase.
    assert {status for status, _ in answers} <= {202, 429}
    purchase_ids = {body["purchase_id"] for status, body in answers if status == 202}
    assert len(purchase_ids) == 1
    purchase_id = str(purchase_ids.pop())
    assert (await final_state(http, live, "dup-user", purchase_id))["status"] == "confirmed"

    async def replayed_later() -> object:
        status, later = await buy(http, live, "dup-user", key, item_id)
        assert status in (202, 429)  # 429 until the user's rate-limit window has passed
        return later["purchase_id"] if status == 202 else None

    assert await wait_for(replayed_later, timeout_s=10, interval_s=0.5) == purchase_id
    assert (await item(http, live, item_id))["sold"] == 1
    report = await check_invariants(live.settings.database_url, [item_id], [purchase_id])
    assert report.ok and report.items[0].confirmed == 1


async def test_reusing_a_key_with_another_body_is_refused(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}",
        json={"stock": 5, "per_user_limit": 2},
        headers=live.admin_headers,
    ):
        pass
    key = uuid.uuid4().hex
    assert (await buy(http, live, "reuser", key, item_id))[0] == 202
    status, body = await buy(http, live, "reuser", key, item_id, qty=2)
    assert status == 422 and body["error"] == "idempotency_key_reused"


async def test_rejected_units_go_back_to_the_filter(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}",
        json={"stock": 2, "per_user_limit": 1},
        headers=live.admin_headers,
    ):
        pass
    # Two keys of one user pass the filter; Postgres confirms one (per-user limit).
    first = await buy(http, live, "greedy", "k1", item_id)
    second = await buy(http, live, "greedy", "k2", item_id)
    states = [
        await final_state(http, live, "greedy", str(body["purchase_id"]))
        for _, body in (first, second)
    ]
    assert sorted(str(s["status"]) for s in states) == ["confirmed", "rejected"]
    assert {s["reason"] for s in states} == {None, "per_user_limit"}

    async def unit_came_back() -> bool:
        status, body = await buy(http, live, "patient", uuid.uuid4().hex, item_id)
        if status == 202:
            final = await final_state(http, live, "patient", str(body["purchase_id"]))
            return final["status"] == "confirmed"
        return False

    assert await wait_for(unit_came_back, timeout_s=30, interval_s=0.6)
    assert (await item(http, live, item_id))["remaining"] == 0


async def test_nobody_reads_another_users_purchase(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}", json={"stock": 3}, headers=live.admin_headers
    ):
        pass
    _, body = await buy(http, live, "owner", "key-1", item_id)
    url = f"{live.url}/v1/purchases/{body['purchase_id']}"
    async with http.get(url, headers=live.user_headers("intruder")) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "purchase_not_found"
    async with http.get(url + "x", headers=live.user_headers("owner")) as response:
        assert response.status == 404
    async with http.get(url, headers=live.user_headers("owner")) as response:
        assert response.status == 200


async def test_admin_routes(live: LiveStack, http: aiohttp.ClientSession) -> None:
    item_id = fresh_id()
    url = f"{live.url}/v1/items/{item_id}"
    async with http.put(url, json={"stock": 3}) as response:
        assert response.status == 401
    async with http.put(url, json={"stock": 3}, headers=live.user_headers("u")) as response:
        assert response.status == 403 and (await response.json())["error"] == "forbidden"
    async with http.put(url, json={"stock": 3}, headers=live.admin_headers) as response:
        assert response.status == 201
    async with http.put(url, json={"stock": 4}, headers=live.admin_headers) as response:
        assert response.status == 200 and (await response.json())["remaining"] == 4
    _, body = await buy(http, live, "u1", "k", item_id)
    await final_state(http, live, "u1", str(body["purchase_id"]))
    async with http.put(url, json={"stock": 0}, headers=live.admin_headers) as response:
        assert response.status == 409
        assert (await response.json())["error"] == "stock_below_sold"
    assert await item(http, live, item_id) == {
        "item_id": item_id,
        "stock": 4,
        "sold": 1,
        "remaining": 3,
        "per_user_limit": 1,
        "starts_at": None,
        "ends_at": None,
        "hold_s": None,
    }
    async with http.get(f"{live.url}/v1/items/{fresh_id()}") as response:
        assert response.status == 404


async def test_health_ready_metrics_and_openapi(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{live.url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{live.url}/readyz") as response:
        body = await response.json()
        assert response.status == 200
        assert body["checks"] == {"postgres": "ok", "redis": "ok", "kafka": "ok"}
    async with http.get(f"{live.url}/metrics") as response:
        text = await response.text()
        assert "flashsale_http_requests_total" in text and "flashsale_admitted_total" in text
    async with http.get(f"{live.url}/openapi.json") as response:
        spec = await response.json()
        assert spec["openapi"].startswith("3.")
        assert {"/v1/items/{item_id}", "/v1/purchases", "/v1/purchases/{purchase_id}"} <= set(
            spec["paths"]
        )


async def test_unknown_routes_and_methods_answer_json(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{live.url}/v2/nothing") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    async with http.delete(f"{live.url}/v1/purchases") as response:
        assert response.status == 405
        assert (await response.json())["error"] == "method_not_allowed"


async def test_a_retry_is_answered_even_past_the_rate_limit(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}", json={"stock": 100}, headers=live.admin_headers
    ):
        pass
    status, first = await buy(http, live, "impatient", "the-key", item_id)
    assert status == 202
    answers = await asyncio.gather(
        *(buy(http, live, "impatient", f"other-{n}", item_id) for n in range(30))
    )
    assert 429 in {status for status, _ in answers}  # the user is over the limit now
    status, again = await buy(http, live, "impatient", "the-key", item_id)
    assert status == 202 and again["purchase_id"] == first["purchase_id"]


async def test_multi_unit_purchases_are_not_refused_while_stock_remains(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    async with http.put(
        f"{live.url}/v1/items/{item_id}",
        json={"stock": 4, "per_user_limit": 2},
        headers=live.admin_headers,
    ):
        pass
    for user in ("pair-1", "pair-2"):
        status, body = await buy(http, live, user, "k", item_id, qty=2)
        assert status == 202, body
        assert (await final_state(http, live, user, str(body["purchase_id"])))["status"] == (
            "confirmed"
        )
    status, body = await buy(http, live, "pair-3", "k", item_id, qty=1)
    assert status == 409 and body["error"] == "sold_out"
