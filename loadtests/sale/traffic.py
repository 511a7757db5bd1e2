"""Steady buying traffic for fault runs: new buyers at a bounded rate, retries with
the same Idempotency-Key when the gateway is down or answers 503, as a careful
client would.

A task in the fault test's own event loop (through loadtests.sale.client), not Locust:
the test injects its fault while the traffic runs and reads every 202's time and
every id each key was answered with, which a Locust child process would have to
hand back through files.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from loadtests.sale.client import NO_ANSWER, GatewayClient
from loadtests.sale.target import Target

RETRIES = 8
RETRY_PAUSE_S = 0.5
REQUEST_TIMEOUT_S = 5.0
RETRYABLE = {NO_ANSWER, 503, 409}


@dataclass
class TrafficOutcome:
    # purchase id -> when the client first saw 202 (epoch seconds)
    accepted: dict[str, float] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    # (user, key) -> every purchase id answered for it: must be one
    ids_per_request: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    requests: int = 0

    @property
    def inconsistent_ids(self) -> list[tuple[str, str]]:
        return [request for request, ids in self.ids_per_request.items() if len(ids) > 1]


async def _one_buyer(client: GatewayClient, item_id: str, outcome: TrafficOutcome) -> None:
    user = f"buyer-{uuid.uuid4().hex[:10]}"
    key = uuid.uuid4().hex
    token = client.token(user)
    for _attempt in range(RETRIES):
        outcome.requests += 1
        status, body, _ = await client.call(
            "POST",
            "/v1/purchases",
            token,
            REQUEST_TIMEOUT_S,
            json={"item_id": item_id},
            headers={"Idempotency-Key": key},
        )
        outcome.statuses[status] += 1
        if status == 202:
            purchase_id = str(body["purchase_id"])
            outcome.accepted.setdefault(purchase_id, time.time())
            outcome.ids_per_request.setdefault((user, key), set()).add(purchase_id)
        retry = status in RETRYABLE and body.get("error") != "sold_out"
        if not retry:
            return
        await asyncio.sleep(RETRY_PAUSE_S)


async def run_traffic(
    target: Target,
    items: list[str],
    duration_s: float,
    rate_per_s: float,
    stop: asyncio.Event | None = None,
    seed: int = 0,
    outcome: TrafficOutcome | None = None,
) -> TrafficOutcome:
    """Start a buyer every 1/rate seconds for `duration_s`, then wait for every buyer.

    Pass `outcome` to watch the answers while the traffic runs."""
    outcome = TrafficOutcome() if outcome is None else outcome
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        client = GatewayClient(session, target)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            group.create_task(_one_buyer(client, rng.choice(items), outcome))
            await asyncio.sleep(1 / rate_per_s)
    return outcome
