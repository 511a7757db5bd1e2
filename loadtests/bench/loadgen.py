"""The load generator: the same purchase requests, spread over client processes.

One aiohttp client process tops out at a few thousand requests per second on a
small machine, so a run's requests are split over `clients` processes, each
with its own event loop and its share of the connections. They start together:
each one signs its tokens, says `ready`, and waits for the parent's `go`. The
run's window is from the earliest start to the latest finish (wall clock).

Each client process runs loadtests.bench.loadclient: per run, one shard plan
(a JSON line) on stdin, then `go`; it answers `ready`, and writes its result to
the file the plan names. Not on its stdout: twice in a morning a result line of
~0.5 MB that a client had written in full (its socket empty, the client back at
its loop's top) never came out of the parent's `readline` (uvloop's subprocess
pipes), and the bench waited its 660 s for it. A file the parent polls has no
such failure.

Not Locust (which drives `flashsale loadtest`'s scenarios): the bench must send
every system exactly the same burst, one request per buyer, started together in
every process (ready/go) and with every latency kept, and the generator's own
cost per request must stay small (tokens signed before the clock starts, uvloop,
no per-user greenlets or live statistics) so that the systems are what is measured.
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
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtests.bench.errors import BenchError

REQUEST_TIMEOUT_S = 30.0
TOKEN_TTL_S = 3600
READY_TIMEOUT_S = 60.0
# Past the run's own time bound: how long to wait for a client's result.
RESULT_GRACE_S = REQUEST_TIMEOUT_S + 30.0
NO_ANSWER = 0  # status recorded for a connection error or a client timeout
READY = b"ready\n"
GO = b"go\n"
RESULT_POLL_S = 0.05
DUMP_TIMEOUT_S = 10.0
DUMP_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What every system gets: `requests` purchases, one per buyer, `concurrency` in flight."""

    purchases_url: str
    item_id: str
    secret: str
    buyer_prefix: str
    requests: int
    concurrency: int
    clients: int
    run_timeout_s: float


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """One client process's part of a run."""

    purchases_url: str
    item_id: str
    secret: str
    buyer_prefix: str
    first_buyer: int
    count: int
    concurrency: int
    run_timeout_s: float
    result_path: str  # written whole (a rename) when the run is over


@dataclass(slots=True)
class ShardResult:
    started_at: float = 0.0
    finished_at: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    started_at: float  # wall clock (time.time()), comparable with Postgres' clock
    elapsed_s: float
    latencies_s: tuple[float, ...]  # of answered requests, sorted
    statuses: dict[int, int]

    @property
    def answered(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != NO_ANSWER)

    @property
    def answered_per_s(self) -> float:
        return self.answered / max(self.elapsed_s, 1e-9)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_s:
            return 0.0
        index = min(int(fraction * len(self.latencies_s)), len(self.latencies_s) - 1)
        return self.latencies_s[index] * 1000


# ---- parent side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadClients:
    """The client processes of a bench, reused run after run (started once: an
    aiohttp import costs a second on a busy 2-core machine)."""

    processes: tuple[asyncio.subprocess.Process, ...]
    log_path: Path

    async def drive(self, plan: LoadPlan) -> LoadResult:
        """Send the plan's requests from up to `plan.clients` processes; merge what they saw."""
        shards = split(plan, len(self.processes), self.log_path.parent / "results")
        await asyncio.to_thread(_clear, [Path(shard.result_path) for shard in shards])
        active = self.processes[: len(shards)]
        for process, shard in zip(active, shards, strict=True):
            await _send_line(process, json.dumps(asdict(shard)).encode() + b"\n")
        for process in active:
            await _expect_ready(process)
        for process in active:
            await _send_line(process, GO)
        timeout_s = plan.run_timeout_s + RESULT_GRACE_S
        try:
            results = await asyncio.gather(
                *(
                    _result(process, Path(shard.result_path), timeout_s)
                    for process, shard in zip(active, shards, strict=True)
                )
            )
        except BenchError:
            for process in active:
                await dump_stacks(process.pid, self.log_path)
            raise
        return merge(plan.requests, results)


@contextlib.asynccontextmanager
async def load_clients(count: int, log_path: Path) -> AsyncIterator[LoadClients]:
    """`count` client processes, all killed on exit whatever happens."""
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        processes = []
        for _ in range(count):
            process = await _spawn_client(log_path)
            stack.push_async_callback(_stop, process)
            processes.append(process)
        yield LoadClients(tuple(processes), log_path)


def split(plan: LoadPlan, available: int, results_dir: Path) -> list[ShardPlan]:
    clients = max(1, min(plan.clients, available, plan.requests, plan.concurrency))
    shards = []
    first = 0
    for index in range(clients):
        count = plan.requests // clients + (1 if index < plan.requests % clients else 0)
        concurrency = plan.concurrency // clients + (1 if index < plan.concurrency % clients else 0)
        shards.append(
            ShardPlan(
                plan.purchases_url,
                plan.item_id,
                plan.secret,
                plan.buyer_prefix,
                first,
                count,
                concurrency,
                plan.run_timeout_s,
                str(results_dir / f"{plan.buyer_prefix}-{index}.json"),
            )
        )
        first += count
    return shards


async def _spawn_client(log_path: Path) -> asyncio.subprocess.Process:
    log = await asyncio.to_thread(log_path.open, "ab")
    with log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtests.bench.loadclient",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            # Its own session: a Ctrl-C reaches only us, and we stop it here.
            start_new_session=True,
        )


async def _send_line(process: asyncio.subprocess.Process, line: bytes) -> None:
    assert process.stdin is not None
    process.stdin.write(line)
    await process.stdin.drain()


async def dump_stacks(pid: int, log_path: Path) -> None:
    """What a process that stopped answering is doing, appended to its log: its
    threads (py-spy, when installed) and its asyncio tasks (SIGUSR1, see
    services.taskdump), for a hang that does not come back on a rerun."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if py_spy.exists():
        log = await asyncio.to_thread(log_path.open, "ab")
        with log, contextlib.suppress(OSError):
            dump = await asyncio.create_subprocess_exec(
                str(py_spy), "dump", "--pid", str(pid), stdout=log, stderr=log
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dump.wait(), DUMP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(DUMP_WAIT_S)


async def _expect_ready(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
    except TimeoutError as exc:
        raise BenchError(f"client process {process.pid} not ready in {READY_TIMEOUT_S}s") from exc
    if line != READY:
        raise BenchError(f"client process {process.pid} failed (see bench-clients.log)")


def _clear(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)


async def _result(process: asyncio.subprocess.Process, path: Path, timeout_s: float) -> ShardResult:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(path.exists):
        if process.returncode is not None:
            raise BenchError(f"client process {process.pid} exited (see bench-clients.log)")
        if time.monotonic() > deadline:
            raise BenchError(
                f"client process {process.pid} did not report in {timeout_s}s"
                " (the clients' stacks are in bench-clients.log)"
            )
        await asyncio.sleep(RESULT_POLL_S)
    raw = await asyncio.to_thread(path.read_bytes)
    await asyncio.to_thread(path.unlink, missing_ok=True)
    try:
        data = json.loads(raw)
        return ShardResult(
            started_at=float(data["started_at"]),
            finished_at=float(data["finished_at"]),
            latencies_s=[float(x) for x in data["latencies_s"]],
            statuses=Counter({int(k): int(v) for k, v in data["statuses"].items()}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"client process {process.pid} sent no result (see its log)") from exc


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # a client holds nothing worth a graceful stop
    await process.wait()


def merge(requests: int, results: list[ShardResult]) -> LoadResult:
    started = min(r.started_at for r in results)
    finished = max(r.finished_at for r in results)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    for result in results:
        statuses.update(result.statuses)
        latencies.extend(result.latencies_s)
    return LoadResult(
        requests=requests,
        started_at=started,
        elapsed_s=finished - started,
        latencies_s=tuple(sorted(latencies)),
        statuses=dict(statuses),
    )
