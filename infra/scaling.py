"""`flashsale consumers scale N`: grow or shrink a running stack's consumers, live."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from infra.embedded.proc import pid_alive, terminate_pid
from infra.processes import start_consumer
from infra.stack import wait_for_consumers
from infra.stackfile import StackFile
from infra.status import settings_for

# Leaving the group cleanly takes a batch and a rebalance; give it time.
CONSUMER_STOP_GRACE_S = 15.0


def scale_consumers(state_dir: Path, count: int, progress: Callable[[str], None]) -> None:
    stack = StackFile.load(state_dir)
    settings = settings_for(stack).replace(state_dir=state_dir)
    running = [
        (name, pid)
        for name, pid in zip(stack.consumer_names, stack.pids.consumers, strict=True)
        if pid_alive(pid)
    ]
    while len(running) > count:
        name, pid = running.pop()
        progress(f"stopping {name} (pid {pid})")
        terminate_pid(pid, grace_s=CONSUMER_STOP_GRACE_S)
        _save(stack, state_dir, running)
        if running:
            # One departure per rebalance: members leaving while the group is
            # still rebalancing have stalled the embedded broker's coordinator.
            progress("waiting for the rebalance to settle")
            wait_for_consumers(settings, [n for n, _ in running])
    while len(running) < count:
        name = f"consumer-{len(running)}-{secrets.token_hex(2)}"
        pid = start_consumer(settings, state_dir / "logs", name)
        progress(f"started {name} (pid {pid})")
        running.append((name, pid))
    _save(stack, state_dir, running)
    if running:
        progress("waiting for the rebalance to settle")
        wait_for_consumers(settings, stack.consumer_names)
    progress(f"{len(running)} consumer(s) running")


def _save(stack: StackFile, state_dir: Path, running: list[tuple[str, int]]) -> None:
    stack.consumer_names = [name for name, _ in running]
    stack.pids.consumers = [pid for _, pid in running]
    stack.save(state_dir)
