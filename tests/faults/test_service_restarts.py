"""The broker, Redis and Postgres restarted during a sale: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import aiohttp

from services.resources import open_core
from services.store.leases import list_leases
from services.tokens import issue_token
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack


async def test_broker_restart_loses_its_log_and_nothing_is_lost(fault_stack: FaultStack) -> None:
    report, outcome, _ = await fault_stack.sale_with_fault(
        fault_stack.faults.restart_broker, at_s=3.0, duration_s=10.0
    )
    assert report.ok, report.all_violations
    assert len(outcome.accepted) > 0
    settings = fault_stack.settings

    async def new_generations() -> list[int]:
        async with open_core(settings) as core:
            leases = await list_leases(core.pool, settings.topic)
        return [lease.partition for lease in leases if lease.log_generation > 0]

    # The consumers noticed the new log rather than skipping its first records.
    assert await wait_for(new_generations, timeout_s=30, interval_s=0.5)


async def test_redis_restart_rebuilds_the_filter_and_keeps_purchase_ids(
    fault_stack: FaultStack,
) -> None:
    (item_id,) = await fault_stack.create_items(count=1, stock=10)
    target = fault_stack.target
    headers = {
        "Authorization": f"Bearer {issue_token(target.secret, 'early-bird', 3600)}",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    url = f"{target.gateway_url}/v1/purchases"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"item_id": item_id}, headers=headers) as response:
            assert response.status == 202
            first = (await response.json())["purchase_id"]
        await _final(http, target.gateway_url, headers, first)

        await asyncio.to_thread(fault_stack.faults.restart_redis)

        async def retried() -> str | None:
            async with http.post(url, json={"item_id": item_id}, headers=headers) as response:
                if response.status == 202:
                    return str((await response.json())["purchase_id"])
                assert response.status in (503, 429), await response.text()
                return None

        # Fail closed (503) until the reconciler rebuilt the filter, then the same id.
        assert await wait_for(retried, timeout_s=20, interval_s=0.3) == first
        item_url = f"{target.gateway_url}/v1/items/{item_id}"

        async def second_copy_settled() -> bool:
            levels = await _filter_units(fault_stack, item_id)
            return levels == 9  # the retry's unit came back: stock 10, sold 1

        await wait_for(second_copy_settled, timeout_s=20, interval_s=0.3)
        async with http.get(item_url) as response:
            assert (await response.json())["sold"] == 1

    report, _, _ = await fault_stack.sale_with_fault(
        fault_stack.faults.restart_redis, at_s=2.0, duration_s=8.0
    )
    assert report.ok, report.all_violations


async def test_postgres_restart_fails_fast_and_loses_nothing(fault_stack: FaultStack) -> None:
    target = fault_stack.target
    await fault_stack.create_items(count=1, stock=50)

    def outage() -> None:
        fault_stack.faults.restart_postgres(down_s=4.0)

    async def readiness_during_outage() -> list[int]:
        seen = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                async with http.get(f"{target.gateway_url}/readyz") as response:
                    seen.append(response.status)
                await asyncio.sleep(0.2)
        return seen

    stopping = asyncio.create_task(asyncio.to_thread(outage))
    await asyncio.sleep(0.5)
    statuses = await readiness_during_outage()
    await stopping
    assert 503 in statuses  # not ready while Postgres is down, and it answered, not hung
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: _ready(http, target.gateway_url), timeout_s=30, interval_s=0.3)

    report, outcome, _ = await fault_stack.sale_with_fault(outage, at_s=2.0, duration_s=10.0)
    assert report.ok, report.all_violations
    assert outcome.statuses[503] > 0 or outcome.statuses[202] > 0


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as response:
        return response.status == 200


async def _final(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], purchase_id: str
) -> None:
    auth = {"Authorization": headers["Authorization"]}
    async with http.get(f"{url}/v1/purchases/{purchase_id}?wait=30", headers=auth) as response:
        assert (await response.json())["status"] == "confirmed"


async def _filter_units(fault_stack: FaultStack, item_id: str) -> int | None:
    async with open_core(fault_stack.settings) as core:
        levels = await core.stock.shard_levels(item_id)
    return None if None in levels else sum(level or 0 for level in levels)


async def test_purchases_fail_closed_while_redis_is_down(fault_stack: FaultStack) -> None:
    (item_id,) = await fault_stack.create_items(count=1, stock=10)
    target = fault_stack.target
    headers = {
        "Authorization": f"Bearer {issue_token(target.secret, 'closed', 3600)}",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    url = f"{target.gateway_url}/v1/purchases"
    redis = fault_stack.stack.redis
    for node in redis.nodes:
        node.kill()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with http.post(url, json={"item_id": item_id}, headers=headers) as response:
                assert response.status == 503
                assert (await response.json())["error"] == "unavailable"
            async with http.get(f"{target.gateway_url}/readyz") as response:
                assert response.status == 503
    finally:
        for node in redis.nodes:
            node.start()
    async with aiohttp.ClientSession() as http:

        async def admitted() -> bool:
            async with http.post(url, json={"item_id": item_id}, headers=headers) as response:
                return response.status == 202

        assert await wait_for(admitted, timeout_s=20, interval_s=0.3)


async def test_readyz_asks_the_broker_itself(fault_stack: FaultStack) -> None:
    """A frozen broker must make /readyz say not ready, not cached metadata say ok."""
    broker_pid = fault_stack.stack.broker.pid
    assert broker_pid is not None
    url = f"{fault_stack.target.gateway_url}/readyz"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            async with http.get(url) as response:
                body = await response.json()
                assert response.status == 503 and body["checks"]["kafka"] == "down"
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        await wait_for(lambda: _ready(http, fault_stack.target.gateway_url), timeout_s=30)
