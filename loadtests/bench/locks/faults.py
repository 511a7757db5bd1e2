"""The real faults of the `locks` phase, one round at a time, and the worker
processes they hit. The pause is here; the failover is locks/failover.py.

* pause: a worker process stops itself (SIGSTOP) between its read and its
  write while holding the lock; we see its state `T` in /proc, let other worker
  processes buy for longer than the lock's TTL, then SIGCONT it.
Each round sells a fresh item; Postgres counts what was sold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from loadtests.bench.errors import BenchError
from loadtests.bench.locks.designs import LockSetup
from loadtests.bench.locks.worker import HOLD_NONE, HOLD_STOP, STARTED

STATE_POLL_S = 0.02
STATE_TIMEOUT_S = 30.0
WORKER_TIMEOUT_S = 60.0

NewItem = Callable[[int], Awaitable[str]]  # stock -> a fresh item id
Sold = Callable[[str], Awaitable[int]]  # item id -> units sold (per Postgres)


@dataclass(frozen=True, slots=True)
class Round:
    stock: int
    sold: int
    evidence: dict[str, bool]  # what was checked that the fault was really there
    outcomes: dict[str, int]

    @property
    def oversold(self) -> int:
        return max(0, self.sold - self.stock)


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T stopped, Z, ...); '' when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


async def wait_state(pid: int, state: str, timeout_s: float = STATE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_state(pid) == state:
            return True
        await asyncio.sleep(STATE_POLL_S)
    return False


@dataclass(frozen=True, slots=True)
class Workers:
    """How to start a buyer process (worker.py) of one design."""

    log_path: Path
    topic: str = ""  # flashsale: the partition lease's topic

    @contextlib.asynccontextmanager
    async def start(
        self, setup: LockSetup, item: str, buyer: str, count: int, hold: str
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        """The worker, killed on exit if it is still there (also SIGCONT'd first)."""
        await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
        log = await asyncio.to_thread(self.log_path.open, "ab")
        with log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtests.bench.locks.worker",
                setup.to_json(),
                item,
                buyer,
                "--count",
                str(count),
                "--hold",
                hold,
                "--deadline-s",
                str(WORKER_TIMEOUT_S),
                "--topic",
                self.topic,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        try:
            yield process
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                    process.kill()
            await process.wait()


async def finish(process: asyncio.subprocess.Process) -> dict[str, int]:
    """Its outcomes (the last stdout line), bounded in time."""
    try:
        out, _ = await asyncio.wait_for(process.communicate(), WORKER_TIMEOUT_S)
    except TimeoutError as exc:
        raise BenchError(f"worker {process.pid} did not finish") from exc
    lines = out.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise BenchError(f"worker {process.pid} failed (exit {process.returncode})")
    outcomes: dict[str, int] = json.loads(lines[-1])
    return outcomes


async def pause_round(
    setup: LockSetup,
    workers: Workers,
    new_item: NewItem,
    sold: Sold,
    stock: int,
    others: int,
    pause_s: float,
) -> Round:
    """The holder stops between read and write for `pause_s` (> TTL) while others buy."""
    item = await new_item(stock)
    # Buyer names are unique per item: flashsale would take a name seen before
    # for a retry of the same purchase.
    async with workers.start(setup, item, f"{item}-paused", 1, HOLD_STOP) as paused:
        stopped = await wait_state(paused.pid, "T")
        if not stopped:
            raise BenchError(f"{setup.design}: the holder {paused.pid} never stopped")
        async with contextlib.AsyncExitStack() as stack:
            buyers = [
                await stack.enter_async_context(
                    workers.start(setup, item, f"{item}-other{n}", 4 * stock, HOLD_NONE)
                )
                for n in range(others)
            ]
            # The pause counts from the moment the others buy: started on a busy
            # machine, they could still be importing when the holder woke up.
            await asyncio.gather(*(_started(buyer) for buyer in buyers))
            await asyncio.sleep(pause_s)
            still_stopped = process_state(paused.pid) == "T"
            os.kill(paused.pid, signal.SIGCONT)
            results = [await finish(process) for process in [paused, *buyers]]
    evidence = {"holder_state_T": stopped, "still_T_after_pause": still_stopped}
    return Round(stock, await sold(item), evidence, merge(results))


async def _started(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), WORKER_TIMEOUT_S)
    except TimeoutError as exc:
        raise BenchError(f"buyer {process.pid} did not start") from exc
    if line.decode().strip() != STARTED:
        raise BenchError(f"buyer {process.pid} said {line!r} instead of starting")


def merge(results: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for result in results:
        for key, n in result.items():
            merged[key] = merged.get(key, 0) + n
    return merged
