"""A 503 means nothing stays reserved and nothing is charged (api.md, issue 23), also
when the produce fails after its message reached the broker, or the give-back of
the units fails: a gateway with error failpoints beside the live stack's consumers."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from infra.embedded.proc import free_port, terminate_pid
from infra.processes import start_gateway
from services.failpoints import (
    FENCE_FAILS,
    GIVEBACK_FAILS,
    PRODUCE_DELIVERED_LATE,
    PRODUCE_FAILS,
    PRODUCE_LOST_ACK,
    error_spec,
)
from services.resources import CoreResources
from services.schema import PurchaseMessage, purchase_id_for
from services.stockfilter.filter import RESERVED
from services.stockfilter.keys import idempotency_key
from services.store.purchases import get_purchase
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack

STOCK = 3
GATEWAY_INDEX = 70


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, object]


@dataclass(frozen=True)
class Units:
    """What the filter holds, what its reservation records hold, and stock - sold."""

    filter_units: int
    in_flight: int
    unsold: int

    @property
    def exact(self) -> bool:
        return self.filter_units + self.in_flight == self.unsold


@asynccontextmanager
async def failing_gateway(live: LiveStack, *points: str) -> AsyncIterator[str]:
    """A gateway of the live stack's topic whose `points` fail; its URL."""
    settings = live.settings.replace(gateway_port=free_port(), failpoint=error_spec(*points))
    pid = start_gateway(settings, settings.state_dir / "logs", index=GATEWAY_INDEX)
    try:
        yield f"http://127.0.0.1:{settings.gateway_port}"
    finally:
        terminate_pid(pid, grace_s=10)


async def buy(
    http: aiohttp.ClientSession, live: LiveStack, url: str, user: str, key: str, item_id: str
) -> Answer:
    async with http.post(
        f"{url}/v1/purchases", json={"item_id": item_id}, headers=live.user_headers(user, key)
    ) as response:
        return Answer(response.status, await response.json())


async def final(
    http: aiohttp.ClientSession, live: LiveStack, user: str, purchase_id: object
) -> dict[str, object]:
    url = f"{live.url}/v1/purchases/{purchase_id}?wait=30"
    async with http.get(url, headers=live.user_headers(user)) as response:
        assert response.status == 200, await response.text()
        body: dict[str, object] = await response.json()
        return body


async def new_item(http: aiohttp.ClientSession, live: LiveStack) -> str:
    item_id = fresh_id("p503")
    body = {"stock": STOCK, "per_user_limit": 1}
    url = f"{live.url}/v1/items/{item_id}"
    async with http.put(url, json=body, headers=live.admin_headers) as response:
        assert response.status == 201, await response.text()
    return item_id


async def units(core: CoreResources, item_id: str) -> Units:
    levels = await core.stock.shard_levels(item_id)
    records = await core.stock.reservations(item_id)
    row = await core.pool.fetchrow("SELECT stock, sold FROM items WHERE item_id = $1", item_id)
    assert row is not None
    in_flight = sum(len(shard_records) for shard_records in records.values())  # 1 unit each
    return Units(sum(level or 0 for level in levels), in_flight, row["stock"] - row["sold"])


async def settled(core: CoreResources, item_id: str) -> Units | None:
    """The units once quiet: no reservation record left, and the filter exact."""
    found = await units(core, item_id)
    return found if found.in_flight == 0 and found.exact else None


async def counted(http: aiohttp.ClientSession, url: str, series: str) -> float:
    """A gateway's metric, scraped."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(series + " ")]
    return float(values[0]) if values else 0.0


def purchase_of(live: LiveStack, user: str, key: str) -> str:
    return purchase_id_for(live.settings.secret, user, key)


async def applied_after(
    http: aiohttp.ClientSession, live: LiveStack, item_id: str
) -> dict[str, object]:
    """Buy the same item through the healthy gateway and wait for the answer: its
    message is later in the item's partition, so everything before it was applied."""
    user = f"later-{uuid.uuid4().hex[:8]}"
    answer = await buy(http, live, live.url, user, uuid.uuid4().hex, item_id)
    assert answer.status == 202, answer
    return await final(http, live, user, answer.body["purchase_id"])


async def test_a_produce_that_reached_the_broker_answered_503_is_never_charged(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    item_id = await new_item(http, live)
    user, key = "lost-ack-user", uuid.uuid4().hex
    async with failing_gateway(live, PRODUCE_DELIVERED_LATE) as url:
        answer = await buy(http, live, url, user, key, item_id)
    assert answer.status == 503 and answer.body["error"] == "unavailable", answer
    # The message is in the log: the purchase after it is applied after it.
    assert (await applied_after(http, live, item_id))["status"] == "confirmed"
    purchase_id = purchase_of(live, user, key)
    row = await get_purchase(core.pool, purchase_id)
    assert row is not None and (row.status, row.reason) == ("rejected", "unavailable")
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=20)
    assert quiet.unsold == STOCK - 1  # only the later purchase was sold
    # Its status change is an event, once, like any other (the outbox).
    events = await core.pool.fetchval(
        "SELECT array_agg(event_id) FROM purchase_events WHERE purchase_id = $1", purchase_id
    )
    assert events == [f"{purchase_id}:rejected"]


async def test_a_lost_ack_is_answered_by_what_came_first(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    """The message is in the log when the gateway sees the error: the consumer may
    apply it before the gateway writes the rejected row, or after. Either way the
    answer is the purchase's: 503 and rejected, or 202 and confirmed."""
    item_id = await new_item(http, live)
    user, key = "lost-ack-race", uuid.uuid4().hex
    purchase_id = purchase_of(live, user, key)
    async with failing_gateway(live, PRODUCE_LOST_ACK) as url:
        answer = await buy(http, live, url, user, key, item_id)
    assert answer.status in (202, 503), answer
    assert (await applied_after(http, live, item_id))["status"] == "confirmed"
    body = await final(http, live, user, purchase_id)
    expected = ("confirmed", None) if answer.status == 202 else ("rejected", "unavailable")
    assert (body["status"], body["reason"]) == expected
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=20)
    assert quiet.unsold == STOCK - (2 if answer.status == 202 else 1)


async def test_a_retry_after_that_503_gets_the_decided_purchase(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    item_id = await new_item(http, live)
    user, key = "lost-ack-retry", uuid.uuid4().hex
    purchase_id = purchase_of(live, user, key)
    async with failing_gateway(live, PRODUCE_DELIVERED_LATE) as url:
        assert (await buy(http, live, url, user, key, item_id)).status == 503
    retried = await buy(http, live, live.url, user, key, item_id)
    assert (retried.status, retried.body["purchase_id"]) == (202, purchase_id), retried
    assert (await final(http, live, user, purchase_id))["reason"] == "unavailable"
    # Redis forgets the key: the retry reserves again, and its copy is a duplicate
    # of the decided purchase, whose units come back.
    await core.redis.delete(idempotency_key(purchase_id))
    again = await buy(http, live, live.url, user, key, item_id)
    assert (again.status, again.body["purchase_id"]) == (202, purchase_id), again
    assert (await applied_after(http, live, item_id))["status"] == "confirmed"
    body = await final(http, live, user, purchase_id)
    assert (body["status"], body["reason"]) == ("rejected", "unavailable")
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=20)
    assert quiet.unsold == STOCK - 1


async def test_a_certain_failure_gives_back_at_once_and_a_retry_buys(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    item_id = await new_item(http, live)
    user, key = "certain-user", uuid.uuid4().hex
    async with failing_gateway(live, PRODUCE_FAILS) as url:
        assert (await buy(http, live, url, user, key, item_id)).status == 503
    assert await units(core, item_id) == Units(STOCK, 0, STOCK)
    assert await get_purchase(core.pool, purchase_of(live, user, key)) is None
    retried = await buy(http, live, live.url, user, key, item_id)
    assert retried.status == 202, retried
    assert (await final(http, live, user, retried.body["purchase_id"]))["status"] == "confirmed"


async def test_a_failed_giveback_after_a_503_is_repaired_and_never_charged(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    """Nothing in the log and the record left behind: the reconciler would publish it
    (stale after reservation_stale_s) unless the purchase is final in Postgres."""
    item_id = await new_item(http, live)
    user, key = "giveback-user", uuid.uuid4().hex
    async with failing_gateway(live, PRODUCE_FAILS, GIVEBACK_FAILS) as url:
        assert (await buy(http, live, url, user, key, item_id)).status == 503
        giveback_errors = await counted(http, url, "flashsale_giveback_errors_total")
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=30)
    assert quiet == Units(STOCK, 0, STOCK)
    row = await get_purchase(core.pool, purchase_of(live, user, key))
    assert row is not None and (row.status, row.reason) == ("rejected", "unavailable")
    assert giveback_errors == 2  # both tries failed: the reconciler gave the units back


async def test_a_lost_ack_and_a_failed_giveback_return_the_units_once(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    """The late copy (a duplicate) and the reconciler may both settle the record."""
    item_id = await new_item(http, live)
    user, key = "lost-ack-giveback", uuid.uuid4().hex
    async with failing_gateway(live, PRODUCE_DELIVERED_LATE, GIVEBACK_FAILS) as url:
        assert (await buy(http, live, url, user, key, item_id)).status == 503
    assert (await applied_after(http, live, item_id))["status"] == "confirmed"
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=30)
    assert quiet.unsold == STOCK - 1
    row = await get_purchase(core.pool, purchase_of(live, user, key))
    assert row is not None and row.status == "rejected"


async def _answered_202_and_decided(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession, *points: str
) -> None:
    item_id = await new_item(http, live)
    user, key = f"kept-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with failing_gateway(live, *points) as url:
        answer = await buy(http, live, url, user, key, item_id)
    assert answer.status == 202, answer
    assert answer.body["purchase_id"] == purchase_of(live, user, key)
    assert (await final(http, live, user, answer.body["purchase_id"]))["status"] == "confirmed"
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=30)
    assert quiet.unsold == STOCK - 1


async def test_when_postgres_cannot_be_written_an_uncertain_produce_is_a_kept_202(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    await _answered_202_and_decided(live, core, http, PRODUCE_LOST_ACK, FENCE_FAILS)


async def test_when_nothing_can_be_undone_the_reconciler_keeps_the_202(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    """Nothing was sent, the give-back and Postgres fail: the record stays, and the
    reconciler publishes it."""
    await _answered_202_and_decided(live, core, http, PRODUCE_FAILS, GIVEBACK_FAILS, FENCE_FAILS)


async def test_a_reservation_an_earlier_request_made_is_not_given_back(
    live: LiveStack, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    """Redis forgot the key but not the reservation (it lives in another slot, on
    another node of a cluster): the retry finds the earlier request's reservation,
    whose message may be in the log already. Its failed produce answers 202 and
    leaves the record, which the reconciler publishes."""
    item_id = await new_item(http, live)
    user = "earlier-reservation-user"
    levels = await core.stock.shard_levels(item_id)
    key = next(
        k
        for k in (uuid.uuid4().hex for _ in range(100))
        if levels[core.stock.home_shard(purchase_of(live, user, k))]
    )
    purchase_id = purchase_of(live, user, key)
    shard = core.stock.home_shard(purchase_id)
    earlier = PurchaseMessage(purchase_id, user, key, item_id, 1, shard, int(time.time() * 1000))
    code, _left = await core.stock.reserve_at(item_id, shard, purchase_id, 1, earlier.encode())
    assert code == RESERVED
    async with failing_gateway(live, PRODUCE_FAILS) as url:
        answer = await buy(http, live, url, user, key, item_id)
    assert answer.status == 202, answer
    assert answer.body["purchase_id"] == purchase_id
    assert (await final(http, live, user, purchase_id))["status"] == "confirmed"
    quiet = await wait_for(lambda: settled(core, item_id), timeout_s=30)
    assert quiet.unsold == STOCK - 1
