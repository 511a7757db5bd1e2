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

from loadtests.target import Target
from services.tokens import issue_token

CONNECTIONS = 512
REQUEST_TIMEOUT_S = 30.0
RESULT_WAIT_S = 30
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
    session: aiohttp.ClientSession,
    target: Target,
    item_id: str,
    user: str,
    outcome: SaleOutcome,
    on_answer: Callable[[], None],
) -> None:
    token = issue_token(target.secret, user, 3600)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    started = time.perf_counter()
    try:
        async with session.post(
            f"{target.gateway_url}/v1/purchases",
            json={"item_id": item_id, "quantity": 1},
            headers=headers,
        ) as response:
            body = await response.json()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status, body = 0, {}
    outcome.latencies_s.append(time.perf_counter() - started)
    outcome.statuses[status] += 1
    on_answer()
    if status == 202:
        outcome.accepted.append(str(body["purchase_id"]))
        await _await_final(session, target, token, str(body["purchase_id"]), outcome)


async def _await_final(
    session: aiohttp.ClientSession,
    target: Target,
    token: str,
    purchase_id: str,
    outcome: SaleOutcome,
) -> None:
    url = f"{target.gateway_url}/v1/purchases/{purchase_id}?wait={RESULT_WAIT_S}"
    try:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.json()
            status = str(body.get("status", f"http {response.status}"))
            outcome.final[status] += 1
            outcome.final_by_id[purchase_id] = status
    except (aiohttp.ClientError, TimeoutError):
        outcome.final["unanswered"] += 1


async def _watch_sellout(
    session: aiohttp.ClientSession,
    target: Target,
    item_id: str,
    started: float,
    outcome: SaleOutcome,
    done: asyncio.Event,
) -> None:
    url = f"{target.gateway_url}/v1/items/{item_id}"
    while not done.is_set():
        try:
            async with session.get(url) as response:
                item = await response.json()
            if item.get("remaining") == 0:
                outcome.sellout_s = time.perf_counter() - started
                return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(SOLD_POLL_S)


async def run_sale(
    target: Target,
    item_id: str,
    buyers: int,
    on_answer: Callable[[], None] = lambda: None,
) -> SaleOutcome:
    """Every buyer sends one purchase at once, then waits for its final state."""
    outcome = SaleOutcome(requests=buyers)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S + RESULT_WAIT_S)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    run_id = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        done = asyncio.Event()
        watcher = asyncio.create_task(
            _watch_sellout(session, target, item_id, started, outcome, done)
        )
        await asyncio.gather(
            *(
                _buy(session, target, item_id, f"buyer-{run_id}-{n}", outcome, on_answer)
                for n in range(buyers)
            )
        )
        outcome.elapsed_s = time.perf_counter() - started
        done.set()
        await watcher
    return outcome
