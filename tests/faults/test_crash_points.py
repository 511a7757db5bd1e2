"""Kill the gateway and a consumer at every named crash point (design.md, failpoints)
and check that a retry names the same purchase, nothing is lost and nothing applied
twice, and the stock filter ends consistent with Postgres."""

from __future__ import annotations

import time
import uuid

import aiohttp
import pytest

from infra.embedded.proc import free_port, kill_pid, pid_alive
from infra.processes import start_gateway
from loadtests.checks.faultcheck import check_fault_run
from loadtests.sale.traffic import run_traffic
from services.failpoints import CONSUMER_POINTS, GATEWAY_POINTS
from services.resources import open_core
from services.tokens import issue_token
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack

STOCK = 5


@pytest.mark.parametrize("point", GATEWAY_POINTS)
async def test_gateway_killed_at_each_crash_point(fault_stack: FaultStack, point: str) -> None:
    stack = fault_stack.stack
    doomed_settings = stack.settings.replace(gateway_port=free_port(), failpoint=point)
    doomed = start_gateway(doomed_settings, stack.log_dir, index=9)
    (item_id,) = await fault_stack.create_items(count=1, stock=STOCK)
    target = fault_stack.target
    headers = {
        "Authorization": f"Bearer {issue_token(target.secret, 'crash-user', 3600)}",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    body = {"item_id": item_id}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        with pytest.raises(aiohttp.ClientError):
            await http.post(
                f"http://127.0.0.1:{doomed_settings.gateway_port}/v1/purchases",
                json=body,
                headers=headers,
            )
        await wait_for(lambda: _dead(doomed), timeout_s=10)

        async def retried() -> str | None:
            url = f"{target.gateway_url}/v1/purchases"
            async with http.post(url, json=body, headers=headers) as response:
                assert response.status in (202, 409, 503), await response.text()
                answer = await response.json()
                return str(answer["purchase_id"]) if response.status == 202 else None

        purchase_id = await wait_for(retried, timeout_s=20, interval_s=0.5)
        accepted_at = time.time()
        auth = {"Authorization": headers["Authorization"]}
        url = f"{target.gateway_url}/v1/purchases/{purchase_id}?wait=30"
        async with http.get(url, headers=auth) as response:
            assert (await response.json())["status"] == "confirmed"
    report = await check_fault_run(
        stack.settings.database_url, [item_id], {purchase_id: accepted_at}
    )
    assert report.ok, report.all_violations
    assert report.invariants.items[0].sold == 1
    await wait_for(lambda: _filter_matches(fault_stack, item_id, STOCK - 1), timeout_s=20)


@pytest.mark.parametrize("point", CONSUMER_POINTS)
async def test_consumer_killed_at_each_crash_point(fault_stack: FaultStack, point: str) -> None:
    stack = fault_stack.stack
    for name in list(stack.consumer_pids):
        kill_pid(stack.consumer_pids.pop(name))
    doomed = stack.add_consumer("doomed", failpoint=point)
    items = await fault_stack.create_items(count=2, stock=STOCK)
    outcome = await run_traffic(fault_stack.target, items, duration_s=2, rate_per_s=10)
    await wait_for(lambda: _dead(doomed), timeout_s=30)
    stack.add_consumer("rescuer")
    report = await check_fault_run(stack.settings.database_url, items, outcome.accepted)
    assert report.ok, report.all_violations
    for item_id in items:
        sold = next(t.sold for t in report.invariants.items if t.item_id == item_id)
        await wait_for(lambda i=item_id, s=sold: _filter_matches(fault_stack, i, STOCK - s), 20)


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)


async def _filter_matches(fault_stack: FaultStack, item_id: str, units: int) -> bool:
    """No reservation records left, and the filter holds exactly stock - sold."""
    async with open_core(fault_stack.settings) as core:
        levels = await core.stock.shard_levels(item_id)
        records = await core.stock.reservations(item_id)
    return not any(records.values()) and sum(level or 0 for level in levels) == units
