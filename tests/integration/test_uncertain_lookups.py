"""An owner is never told 404 for a purchase that was accepted (issue 23, item 3).

Redis loses its data (restart without persistence, FLUSHALL) between a 202 and
the consumer applying the purchase: the gateway can then find the purchase
neither in Redis nor in Postgres, and must answer "cannot tell yet" (503) until
the fence it produced through the purchases log is passed, never 404.

The stack here has a Redis, a topic and a consumer group of its own (the test
empties Redis), two gateways, and a consumer started only when the test lets it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from infra.embedded.proc import free_port, terminate_pid
from infra.embedded.redis import EmbeddedRedis
from infra.processes import start_consumer, start_gateway
from services.resources import CoreResources
from services.schema import purchase_id_for
from services.settings import Settings
from services.store.leases import ensure_leases
from services.tokens import issue_token
from services.topics import ensure_topic
from tests.conftest import fresh_id, wait_for

PARTITIONS = 2
FINAL_WAIT_S = 30


@dataclass
class HeldBackStack:
    settings: Settings
    redis: EmbeddedRedis
    urls: list[str]
    logs: Path
    consumers: list[int] = field(default_factory=list)

    def headers(self, user_id: str, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {issue_token(self.settings.secret, user_id, 3600)}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def start_consumer(self) -> None:
        name = f"held-consumer-{secrets.token_hex(2)}"
        self.consumers.append(start_consumer(self.settings, self.logs, name))

    def stop_consumers(self) -> None:
        for pid in self.consumers:
            terminate_pid(pid, grace_s=10)
        self.consumers.clear()

    async def flushall(self) -> None:
        client = aioredis.Redis.from_url(self.redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()


@pytest.fixture(scope="module")
def held_back_stack(
    settings: Settings, core: CoreResources, state_root: Path
) -> Iterator[HeldBackStack]:
    redis = EmbeddedRedis(state_root / f"redis-uncertain-{secrets.token_hex(2)}")
    redis.start()
    own = settings.replace(
        redis_url=redis.url,
        topic=f"purchases-uncertain-{secrets.token_hex(3)}",
        events_topic=f"events-uncertain-{secrets.token_hex(3)}",
        consumer_group=f"uncertain-{secrets.token_hex(3)}",
        partitions=PARTITIONS,
    )
    logs = state_root / "logs-uncertain"
    logs.mkdir(exist_ok=True)
    asyncio.run(_prepare(own))
    gateways: list[int] = []
    urls = []
    try:
        for index in range(2):
            port = free_port()
            gateways.append(start_gateway(own.replace(gateway_port=port), logs, index))
            urls.append(f"http://127.0.0.1:{port}")
        stack = HeldBackStack(own, redis, urls, logs)
        yield stack
        stack.stop_consumers()
    finally:
        for pid in gateways:
            terminate_pid(pid, grace_s=10)
        redis.stop()


async def _prepare(settings: Settings) -> None:
    from services.resources import open_core  # noqa: PLC0415

    async with open_core(settings) as core:
        await ensure_leases(core.pool, settings.topic, settings.partitions)
    await ensure_topic(settings.kafka_bootstrap, settings.topic, settings.partitions)


@pytest.fixture
async def stack(held_back_stack: HeldBackStack) -> AsyncIterator[HeldBackStack]:
    """No consumer runs when a test starts: the test starts one when it lets it."""
    yield held_back_stack
    held_back_stack.stop_consumers()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _create_item(http: aiohttp.ClientSession, stack: HeldBackStack) -> str:
    item_id = fresh_id()
    admin = {"Authorization": f"Bearer {stack.settings.admin_token}"}
    url = f"{stack.urls[0]}/v1/items/{item_id}"
    async with http.put(url, json={"stock": 5, "per_user_limit": 1}, headers=admin) as response:
        assert response.status == 201, await response.text()
    return item_id


async def _buy(http: aiohttp.ClientSession, stack: HeldBackStack, user: str, item_id: str) -> str:
    headers = stack.headers(user, secrets.token_hex(8))
    url = f"{stack.urls[0]}/v1/purchases"
    async with http.post(url, json={"item_id": item_id, "quantity": 1}, headers=headers) as answer:
        assert answer.status == 202, await answer.text()
        purchase_id: str = (await answer.json())["purchase_id"]
    return purchase_id


async def _get(
    http: aiohttp.ClientSession, url: str, stack: HeldBackStack, user: str, pid: str, wait: int
) -> tuple[int, dict[str, object], dict[str, str]]:
    address = f"{url}/v1/purchases/{pid}?wait={wait}"
    async with http.get(address, headers=stack.headers(user)) as answer:
        return answer.status, await answer.json(), dict(answer.headers)


async def _lose_redis(stack: HeldBackStack, how: str) -> None:
    if how == "restart":
        await asyncio.to_thread(stack.redis.restart)
    else:
        await stack.flushall()


def _uncertain(status: int, body: dict[str, object], headers: dict[str, str]) -> bool:
    return status == 503 and body["error"] == "unavailable" and int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize("how", ["restart", "flushall"])
async def test_an_accepted_purchase_is_never_404_after_redis_lost_it(
    stack: HeldBackStack, http: aiohttp.ClientSession, how: str
) -> None:
    item_id = await _create_item(http, stack)
    user = f"u-{secrets.token_hex(4)}"
    purchase_id = await _buy(http, stack, user, item_id)
    await _lose_redis(stack, how)
    # Held back: no consumer has applied it. Through both gateways, the one that
    # answered 202 and another one, with and without a wait.
    for url in stack.urls:
        for wait in (0, 1):
            status, body, headers = await _get(http, url, stack, user, purchase_id, wait)
            assert status != 404, f"{url}: an accepted purchase answered 404"
            assert _uncertain(status, body, headers) or body["status"] == "pending", body
    stack.start_consumer()
    for url in reversed(stack.urls):
        status, body, _ = await _get(http, url, stack, user, purchase_id, FINAL_WAIT_S)
        assert (status, body["status"]) == (200, "confirmed"), body


async def test_a_purchase_nobody_made_is_uncertain_then_404(
    stack: HeldBackStack, http: aiohttp.ClientSession
) -> None:
    user = f"u-{secrets.token_hex(4)}"
    never_bought = purchase_id_for(stack.settings.secret, user, "never-sent")
    await stack.flushall()
    status, body, headers = await _get(http, stack.urls[1], stack, user, never_bought, 0)
    assert _uncertain(status, body, headers), (status, body)
    stack.start_consumer()

    async def answered() -> int | None:
        status, _, _ = await _get(http, stack.urls[1], stack, user, never_bought, 5)
        return status if status != 503 else None

    # Once the consumers passed the fence, "unknown" is certain: 404, not 503 for ever.
    assert await wait_for(answered, timeout_s=FINAL_WAIT_S) == 404
    status, _, _ = await _get(http, stack.urls[0], stack, user, never_bought, 0)
    assert status == 404
    async with http.get(f"{stack.urls[1]}/metrics") as answer:
        assert 'flashsale_uncertain_answers_total{route="get"}' in await answer.text()
    async with http.get(f"{stack.urls[1]}/openapi.json") as answer:
        responses = (await answer.json())["paths"]["/v1/purchases/{purchase_id}"]["get"]
    assert "Redis lost data" in responses["responses"]["503"]["description"]


async def test_cancel_and_pay_of_a_forgotten_purchase_are_not_404(
    stack: HeldBackStack, http: aiohttp.ClientSession
) -> None:
    item_id = await _create_item(http, stack)
    user = f"u-{secrets.token_hex(4)}"
    purchase_id = await _buy(http, stack, user, item_id)
    await stack.flushall()
    admin = {"Authorization": f"Bearer {stack.settings.admin_token}"}
    cancel = f"{stack.urls[1]}/v1/purchases/{purchase_id}/cancel"
    async with http.post(cancel, headers=stack.headers(user)) as answer:
        assert answer.status == 503, await answer.text()
        assert (await answer.json())["error"] == "unavailable"
    async with http.post(f"{stack.urls[1]}/v1/purchases/{purchase_id}/pay", headers=admin) as a:
        assert a.status == 503, await a.text()
    stack.start_consumer()
    status, body, _ = await _get(http, stack.urls[1], stack, user, purchase_id, FINAL_WAIT_S)
    assert (status, body["status"]) == (200, "confirmed"), body
