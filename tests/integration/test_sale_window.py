"""Sale windows (api.md: starts_at, ends_at): refused before and after, from the
gateway's cached item, and nothing reaches Kafka or Postgres for a refusal."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import aiohttp

from services.resources import CoreResources
from services.store.purchases import item_counts
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack


def at(offset_s: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def put(
    http: aiohttp.ClientSession, live: LiveStack, item_id: str, body: dict[str, object]
) -> tuple[int, dict[str, object]]:
    async with http.put(
        f"{live.url}/v1/items/{item_id}", json=body, headers=live.admin_headers
    ) as response:
        return response.status, await response.json()


async def buy(
    http: aiohttp.ClientSession, live: LiveStack, item_id: str
) -> tuple[int, dict[str, object], dict[str, str]]:
    headers = live.user_headers(f"buyer-{secrets.token_hex(3)}", secrets.token_hex(6))
    async with http.post(
        f"{live.url}/v1/purchases", json={"item_id": item_id}, headers=headers
    ) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_an_item_without_a_window_shows_nulls(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    status, item = await put(http, live, item_id, {"stock": 3})
    assert status == 201
    assert (item["starts_at"], item["ends_at"], item["hold_s"]) == (None, None, None)


async def test_before_the_start_and_after_the_end_nothing_is_sold(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    early = fresh_id()
    status, item = await put(http, live, early, {"stock": 5, "starts_at": at(3600)})
    assert status == 201 and isinstance(item["starts_at"], str) and item["ends_at"] is None
    status, body, headers = await buy(http, live, early)
    assert (status, body["error"]) == (409, "not_started")
    assert 3590 <= int(headers["Retry-After"]) <= 3601

    late = fresh_id()
    window = {"stock": 5, "starts_at": at(-7200), "ends_at": at(-3600)}
    assert (await put(http, live, late, window))[0] == 201
    status, body, _ = await buy(http, live, late)
    assert (status, body["error"]) == (409, "sale_ended")

    assert await item_counts(core.pool, early) == {}
    assert await item_counts(core.pool, late) == {}
    levels = [shard.units for shard in await core.stock.snapshot(early)]
    assert sum(level or 0 for level in levels) == 5  # loaded before the start


async def test_a_sale_opens_at_its_start(live: LiveStack, http: aiohttp.ClientSession) -> None:
    item_id = fresh_id()
    assert (await put(http, live, item_id, {"stock": 2, "starts_at": at(1.5)}))[0] == 201
    assert (await buy(http, live, item_id))[0] == 409

    async def admitted() -> bool:
        return (await buy(http, live, item_id))[0] == 202

    await wait_for(admitted, timeout_s=15, interval_s=0.2)


async def test_bad_windows_are_refused_and_change_nothing(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id()
    bad_bodies: list[dict[str, object]] = [
        {"stock": 1, "starts_at": "tomorrow"},
        {"stock": 1, "starts_at": "2026-11-25T18:00:00+02:00"},
        {"stock": 1, "ends_at": 1764093600},
        {"stock": 1, "starts_at": at(60), "ends_at": at(30)},
        {"stock": 1, "hold_s": 0},
        {"stock": 1, "hold_s": 86401},
        {"stock": 1, "hold_s": "60"},
    ]
    for body in bad_bodies:
        status, answer = await put(http, live, item_id, body)
        assert (status, answer["error"]) == (422, "invalid_body"), body
    async with http.get(f"{live.url}/v1/items/{item_id}") as response:
        assert response.status == 404
    status, item = await put(http, live, item_id, {"stock": 1, "hold_s": 600})
    assert status == 201 and item["hold_s"] == 600
