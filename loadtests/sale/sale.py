"""A flash sale driven from one process: many concurrent buyers, one request each,
each then long-polling its purchase's final state (the demo and `flashsale sale`).

In-process, not Locust (which must run in a child process: gevent's patching
must not meet asyncio) and not the bench's generator (which keeps statuses and
latencies only): the demo shows each answer as it comes and every final state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from loadtests.sale.client import NO_ANSWER, GatewayClient
from loadtests.sale.target import Target

CONNECTIONS = 512
RESULT_WAIT_S = 30
# Each call: an answer to a POST, or a long poll of RESULT_WAIT_S.
CALL_TIMEOUT_S = 30.0 + RESULT_WAIT_S
SOLD_POLL_S = 0.05


@dataclass
class SaleOutcome:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    final: Counter[str] = field(default_factory=Counter)
    # purchase id -> the status its owner's long poll answered
    final_by_id: dict[str, str] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    sellout_s: float | None = None

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        index = min(int(fraction * len(ordered)), len(ordered) - 1)
        return ordered[index] * 1000


async def _buy(
    client: GatewayClient,
    item_id: str,
    user: str,
    outcome: SaleOutcome,
    on_answer: Callable[[], None],
) -> None:
    token = client.token(user)
    started = time.perf_counter()
    status, body, _ = await client.call(
        "POST",
        "/v1/purchases",
        token,
        CALL_TIMEOUT_S,
        json={"item_id": item_id, "quantity": 1},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    outcome.latencies_s.append(time.perf_counter() - started)
    outcome.statuses[status] += 1
    on_answer()
    if status == 202:
        outcome.accepted.append(str(body["purchase_id"]))
        await _await_final(client, token, str(body["purchase_id"]), outcome)


async def _await_final(
    client: GatewayClient, token: str, purchase_id: str, outcome: SaleOutcome
) -> None:
    path = f"/v1/purchases/{purchase_id}?wait={RESULT_WAIT_S}"
    status, body, _ = await client.call("GET", path, token, CALL_TIMEOUT_S)
    if status == NO_ANSWER:
        outcome.final["unanswered"] += 1
        return
    final = str(body.get("status", f"http {status}"))
    outcome.final[final] += 1
    outcome.final_by_id[purchase_id] = final


async def _watch_sellout(
    client: GatewayClient,
    item_id: str,
    started: float,
    outcome: SaleOutcome,
    done: asyncio.Event,
) -> None:
    while not done.is_set():
        status, item, _ = await client.call("GET", f"/v1/items/{item_id}", None, CALL_TIMEOUT_S)
        if status != NO_ANSWER and item.get("remaining") == 0:
            outcome.sellout_s = time.perf_counter() - started
            return
        await asyncio.sleep(SOLD_POLL_S)


async def run_sale(
    target: Target,
    item_id: str,
    buyers: int,
    on_answer: Callable[[], None] = lambda: None,
) -> SaleOutcome:
    """Every buyer sends one purchase at once, then waits for its final state."""
    outcome = SaleOutcome(requests=buyers)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    run_id = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession(connector=connector) as session:
        client = GatewayClient(session, target)
        started = time.perf_counter()
        done = asyncio.Event()
        watcher = asyncio.create_task(_watch_sellout(client, item_id, started, outcome, done))
        await asyncio.gather(
            *(
                _buy(client, item_id, f"buyer-{run_id}-{n}", outcome, on_answer)
                for n in range(buyers)
            )
        )
        outcome.elapsed_s = time.perf_counter() - started
        done.set()
        await watcher
    return outcome
