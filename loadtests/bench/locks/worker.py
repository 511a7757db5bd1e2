"""A buyer process of the `locks` phase: buys one unit at a time until sold out.

Workers are separate processes so that a fault stops one for real: with
`--hold stop` the worker stops itself (SIGSTOP) between its read and its write
on its first purchase, as a stop-the-world pause would (every thread stops,
the watchdog's renewal thread too); the parent sees its state `T` and sends
SIGCONT later. With `--hold wait` it prints `holding` there and waits for a
line on stdin, while the parent fails Redis over under it.

Run as `python -m loadtests.bench.locks.worker SETUP_JSON ITEM BUYER --count N
--hold none|stop|wait --deadline-s S`; the last stdout line is its result (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import redis
import uvloop

from loadtests.bench.locks.designs import FLASHSALE, Busy, LockSetup, open_design
from loadtests.bench.locks.section import Between, Outcome, sell, sell_by_lease
from services.store.db import open_pool

HOLDING = "holding"
# A buyer (--hold none) prints this once it is ready to buy: a pause must last
# until the others are really buying, however slow their start on a busy machine.
STARTED = "started"
HOLD_NONE, HOLD_STOP, HOLD_WAIT = "none", "stop", "wait"
BUSY_PAUSE_S = 0.01
FLASHSALE_POOL_SIZE = 2

Buy = Callable[[str, str, Between], Awaitable[Outcome]]


async def _stop_myself() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


async def _wait_for_parent() -> None:
    print(HOLDING, flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def _nothing() -> None:
    return None


async def run(args: argparse.Namespace) -> Counter[str]:
    setup = LockSetup.from_json(args.setup)
    first: Between = {HOLD_STOP: _stop_myself, HOLD_WAIT: _wait_for_parent}.get(args.hold, _nothing)
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + args.deadline_s
    async with contextlib.AsyncExitStack() as stack:
        if setup.design == FLASHSALE:
            pool = await open_pool(setup.database_url, FLASHSALE_POOL_SIZE)
            stack.push_async_callback(pool.close)

            async def buy(user: str, key: str, between: Between) -> Outcome:
                return await sell_by_lease(pool, args.topic, args.item, user, key, between)
        else:
            opened = await stack.enter_async_context(open_design(setup))

            async def buy(user: str, key: str, between: Between) -> Outcome:
                return await sell(opened, args.item, user, key, between)

        if args.hold == HOLD_NONE:
            print(STARTED, flush=True)
        for n in range(args.count):
            if time.monotonic() > deadline:
                outcomes["deadline"] += 1
                break
            # A holding worker retries until its one purchase got past the lock.
            outcome = await _attempt(buy, f"{args.buyer}-{n}", first, outcomes)
            if outcome is Outcome.SOLD_OUT or (outcome is not None and args.hold != HOLD_NONE):
                break
    return outcomes


async def _attempt(buy: Buy, user: str, between: Between, outcomes: Counter[str]) -> Outcome | None:
    try:
        outcome = await buy(user, f"k-{user}", between)
    except Busy:
        outcomes["busy"] += 1
        await asyncio.sleep(BUSY_PAUSE_S)
        return None
    except (redis.RedisError, OSError, RuntimeError) as exc:
        # After a failover the old primary is gone: the release (after the
        # write) fails. The sale stands; Postgres counts it.
        outcomes[f"error:{type(exc).__name__}"] += 1
        return None
    outcomes[outcome.value] += 1
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description="A buyer process of the locks phase.")
    parser.add_argument("setup", help="LockSetup as JSON")
    parser.add_argument("item")
    parser.add_argument("buyer")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--hold", choices=(HOLD_NONE, HOLD_STOP, HOLD_WAIT), default=HOLD_NONE)
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument("--topic", default="", help="flashsale: the partition lease's topic")
    args = parser.parse_args()
    outcomes = uvloop.run(run(args))
    print(json.dumps(dict(outcomes)), flush=True)


if __name__ == "__main__":
    main()
