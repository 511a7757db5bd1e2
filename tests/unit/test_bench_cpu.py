"""CPU accounting of the bench: a forking server's reaped workers still count."""

from __future__ import annotations

import subprocess
import sys

from loadtests.bench.cpu import CpuMeter, SystemProcesses, per_unit_us

# A server that forks a worker; the worker burns 0.3 s of its own CPU time
# (measured by itself, so the machine's load does not matter) and is reaped.
SERVER = """
import os, sys, time
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    while time.process_time() < 0.3:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_reaped_worker_counts_for_its_server() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        meter = CpuMeter({"forking": SystemProcesses(forking=(server.pid,))})
        meter.start()
        server.stdin.write("go\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "done"
        spent = meter.stop()["forking"]
        assert spent >= 0.29
        assert SystemProcesses(single=(server.pid,)).cpu_s() < spent  # not the worker's
    finally:
        server.kill()
        server.wait()


def test_per_unit_us() -> None:
    assert per_unit_us(0.5, 1000) == 500.0
    assert per_unit_us(0.5, 0) is None
