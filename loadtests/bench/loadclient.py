"""One client process of the bench's load generator (loadtests.bench.loadgen spawns it).

Per run: one shard plan (a JSON line) on stdin; it signs its tokens, answers
`ready`, waits for `go`, sends its requests, then writes its result (JSON) to the
file the plan names (loadgen's docstring says why not to stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import uvloop

from loadtests.bench.loadgen import (
    GO,
    NO_ANSWER,
    READY,
    REQUEST_TIMEOUT_S,
    TOKEN_TTL_S,
    ShardPlan,
    ShardResult,
)
from services.taskdump import install_task_dump
from services.tokens import issue_token


def main() -> None:
    """Entry point of a client process: one run per plan line, until stdin closes."""
    for line in sys.stdin.buffer:
        shard = ShardPlan(**json.loads(line))
        headers = _headers(shard)
        sys.stdout.buffer.write(READY)
        sys.stdout.buffer.flush()
        if sys.stdin.buffer.readline() != GO:
            return  # the parent gave up before the start
        result = uvloop.run(_send_all(shard, headers))
        report = {
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "latencies_s": result.latencies_s,
            "statuses": {str(status): n for status, n in result.statuses.items()},
        }
        partial = Path(f"{shard.result_path}.partial")
        partial.write_bytes(json.dumps(report).encode())
        os.replace(partial, shard.result_path)  # whole, or not there at all


def _headers(shard: ShardPlan) -> list[dict[str, str]]:
    """Signed before the clock starts: one buyer and one idempotency key per request."""
    headers = []
    for buyer in range(shard.first_buyer, shard.first_buyer + shard.count):
        token = issue_token(shard.secret, f"{shard.buyer_prefix}-{buyer}", TOKEN_TTL_S)
        headers.append(
            {
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": f"k-{buyer}",
                "Content-Type": "application/json",
            }
        )
    return headers


async def _send_all(shard: ShardPlan, headers: list[dict[str, str]]) -> ShardResult:
    install_task_dump()
    body = json.dumps({"item_id": shard.item_id, "quantity": 1}).encode()
    result = ShardResult()
    connector = aiohttp.TCPConnector(limit=shard.concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        pending = iter(headers)
        result.started_at = time.time()
        deadline = time.monotonic() + shard.run_timeout_s
        # Requests still unsent when the run's time is up count as unanswered.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(shard.run_timeout_s), asyncio.TaskGroup() as group:
                for _ in range(min(shard.concurrency, shard.count)):
                    group.create_task(
                        _send_each(session, shard.purchases_url, body, pending, result, deadline)
                    )
        result.finished_at = time.time()
    unsent = shard.count - sum(result.statuses.values())
    if unsent:
        result.statuses[NO_ANSWER] += unsent
    return result


async def _send_each(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    pending: Iterator[dict[str, str]],
    result: ShardResult,
    deadline: float,
) -> None:
    """One connection's worth of work: take the next request until none is left
    or the run's time is up. The deadline is checked here too, not only by the
    timeout that cancels the group: a cancellation that the HTTP client turned
    into an error it raises would be caught below, and the run would go on."""
    for headers in pending:
        if time.monotonic() > deadline:
            return
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            result.statuses[NO_ANSWER] += 1
            continue
        result.latencies_s.append(time.perf_counter() - started)
        result.statuses[status] += 1


if __name__ == "__main__":
    main()
