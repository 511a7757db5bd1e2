"""`flashsale consumers scale N`: grow or shrink a running stack's consumers, live."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from infra.embedded.proc import process_identity, terminate_pid
from infra.processes import start_consumer
from infra.stack import CONSUMER_STOP_GRACE_S, topic_partitions, wait_for_consumers
from infra.stackfile import StackFile, stack_lock


def scale_consumers(
    state_dir: Path,
    count: int,
    progress: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
) -> None:
    """Under the stack lock, so a `down` meanwhile waits and then stops every consumer."""
    with stack_lock(state_dir):
        _scale(state_dir, count, progress, warn or progress)


def _scale(
    state_dir: Path, count: int, progress: Callable[[str], None], warn: Callable[[str], None]
) -> None:
    stack = StackFile.load(state_dir)
    # The stack's partitions, stock shards, topic...: not this shell's environment.
    settings = stack.settings().replace(state_dir=state_dir)
    partitions = asyncio.run(topic_partitions(settings))
    if count > partitions:
        warn(
            f"{count} consumers for {partitions} partitions: "
            f"{count - partitions} will sit idle (a partition has one consumer at a time)"
        )
    running = [
        (name, pid)
        for name, pid in zip(stack.consumer_names, stack.pids.consumers, strict=True)
        if stack.is_ours(pid)
    ]
    started = time.monotonic()
    while len(running) > count:
        name, pid = running.pop()
        progress(f"stopping {name} (pid {pid})")
        terminate_pid(pid, grace_s=CONSUMER_STOP_GRACE_S)
        _save(stack, state_dir, running)
        if running:
            # One departure per rebalance: the embedded broker keeps a leader
            # that leaves while the group is still rebalancing (its Forming
            # state's leave drops the member, not the leader), and then no
            # rebalance ever completes (docs/benchmarks.md, "rebalance").
            progress("waiting for the rebalance to settle")
            wait_for_consumers(settings, [n for n, _ in running])
    while len(running) < count:
        name = f"consumer-{len(running)}-{secrets.token_hex(2)}"
        pid = start_consumer(settings, state_dir / "logs", name)
        identity = process_identity(pid)
        if identity is not None:
            stack.identities[str(pid)] = identity
        progress(f"started {name} (pid {pid})")
        running.append((name, pid))
    _save(stack, state_dir, running)
    if running:
        progress("waiting for the rebalance to settle")
        wait_for_consumers(settings, stack.consumer_names)
    took = time.monotonic() - started
    progress(f"{len(running)} consumer(s) running; the rebalance took {took:.1f}s")


def _save(stack: StackFile, state_dir: Path, running: list[tuple[str, int]]) -> None:
    stack.consumer_names = [name for name, _ in running]
    stack.pids.consumers = [pid for _, pid in running]
    kept = {str(pid) for pid in stack.pids.all()} | {str(stack.supervisor_pid)}
    stack.identities = {pid: ident for pid, ident in stack.identities.items() if pid in kept}
    stack.save(state_dir)
