"""A stuck client of the bench leaves its threads and asyncio tasks in its log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from loadtests.bench.loadgen import dump_stacks

CHILD = """
import asyncio, sys
from services.taskdump import install_task_dump

async def waiting_for_a_reply_that_never_comes() -> None:
    await asyncio.Event().wait()

async def main() -> None:
    install_task_dump()
    task = asyncio.create_task(waiting_for_a_reply_that_never_comes(), name="stuck-request")
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


def test_a_stuck_process_leaves_its_tasks_and_threads_in_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "clients.log"
    with log_path.open("ab") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=log)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        asyncio.run(dump_stacks(child.pid, log_path))
        deadline = time.monotonic() + 30
        text = log_path.read_text()
        while "stuck-request" not in text and time.monotonic() < deadline:
            time.sleep(0.05)
            text = log_path.read_text()
    finally:
        child.kill()
        child.wait()
    assert "stuck-request" in text, text
    assert "waiting_for_a_reply_that_never_comes" in text, text
    assert f"Process {child.pid}" in text, text  # py-spy's thread dump
