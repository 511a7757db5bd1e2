"""The `flashsale` command as a user runs it: up --detach, status, token, down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.embedded.proc import pid_alive
from services.tokens import verify_token

FLASHSALE = [sys.executable, "-m", "infra.cli"]


def run(*args: str, state_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_STATE_DIR"] = str(state_dir)
    env["FLASHSALE_POSTGRES_FSYNC"] = "false"
    env["FLASHSALE_PARTITIONS"] = "4"
    return subprocess.run(
        [*FLASHSALE, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_help_explains_every_command(tmp_path: Path) -> None:
    top = run("--help", state_dir=tmp_path)
    assert top.returncode == 0
    for command in ("up", "down", "token", "status", "consumers", "demo"):
        assert command in top.stdout
    up_help = run("up", "--help", state_dir=tmp_path)
    assert "--consumers" in up_help.stdout and "FLASHSALE_CONSUMERS" in up_help.stdout


def test_up_detach_then_down_leaves_nothing_running(state_root: Path) -> None:
    state_dir = state_root / "cli-stack"
    started = run(
        "up", "--detach", "--consumers", "2", "--gateways", "2", "--port", "0", state_dir=state_dir
    )
    assert started.returncode == 0, started.stderr
    stack = json.loads((state_dir / "stack.json").read_text())
    for key in ("gateway_url", "admin_token", "database_url", "redis_url", "kafka_bootstrap"):
        assert stack[key]
    pids = stack["pids"]
    every_pid = [
        *pids["gateway"],
        *pids["consumers"],
        pids["postgres"],
        *pids["redis"],
        pids["kafka"],
    ]
    assert len(pids["consumers"]) == 2 and len(pids["gateway"]) == 2
    assert all(pid_alive(pid) for pid in every_pid)
    try:
        with urllib.request.urlopen(stack["gateway_url"] + "/readyz", timeout=5) as response:
            assert json.loads(response.read())["status"] == "ready"

        again = run("up", "--detach", "--port", "0", state_dir=state_dir)
        assert again.returncode == 1 and "already running" in again.stderr

        users = [f"user-{n}" for n in range(2000)]
        tokens = run("token", *users, state_dir=state_dir)
        assert tokens.returncode == 0, tokens.stderr
        lines = tokens.stdout.splitlines()
        assert [verify_token(stack["secret"], line) for line in lines] == users

        grown = run("consumers", "scale", "3", state_dir=state_dir)
        assert grown.returncode == 0, grown.stderr
        scaled = json.loads((state_dir / "stack.json").read_text())["pids"]["consumers"]
        assert len(scaled) == 3 and all(pid_alive(pid) for pid in scaled)
        shrunk = run("consumers", "scale", "1", state_dir=state_dir)
        assert shrunk.returncode == 0, shrunk.stderr
        remaining = json.loads((state_dir / "stack.json").read_text())["pids"]["consumers"]
        assert len(remaining) == 1 and not any(pid_alive(p) for p in set(scaled) - set(remaining))
        every_pid += scaled

        status = run("status", state_dir=state_dir)
        assert status.returncode == 0, status.stderr
        assert "partitions" in status.stdout and "consumer-" in status.stdout
    finally:
        stopped = run("down", state_dir=state_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(pid_alive(pid) for pid in every_pid)
    assert not (state_dir / "stack.json").exists()
    assert (state_dir / "postgres" / "pgdata" / "PG_VERSION").exists()  # data stays on disk


def test_down_without_a_stack_says_so(tmp_path: Path) -> None:
    result = run("down", state_dir=tmp_path)
    assert result.returncode == 1 and "flashsale up" in result.stderr


def test_ctrl_c_on_a_foreground_up_stops_everything(state_root: Path) -> None:
    state_dir = state_root / "cli-foreground"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update(
        FLASHSALE_STATE_DIR=str(state_dir),
        FLASHSALE_POSTGRES_FSYNC="false",
        FLASHSALE_PARTITIONS="4",
    )
    process = subprocess.Popen(
        [*FLASHSALE, "up", "--consumers", "1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (state_dir / "stack.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "up did not get ready"
            time.sleep(0.2)
        time.sleep(0.5)  # the file is written just before the "running" line
        pids = json.loads((state_dir / "stack.json").read_text())["pids"]
        every_pid = [
            *pids["gateway"],
            *pids["consumers"],
            pids["postgres"],
            *pids["redis"],
            pids["kafka"],
        ]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped" in output
    assert not any(pid_alive(pid) for pid in every_pid)
