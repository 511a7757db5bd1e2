"""`kill -USR1 PID` prints every asyncio task's stack to stderr: what a process
that seems stuck is waiting for (py-spy sees only threads, not coroutines)."""

from __future__ import annotations

import asyncio
import io
import signal
import sys


def install_task_dump() -> None:
    """Call from inside the running loop."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)


def dump_tasks() -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=out)
    for task in tasks:
        print(f"{task.get_name()}: {task.get_coro()!r}", file=out)
        task.print_stack(limit=30, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()
