"""The `flashsale` command as a user runs it: up --detach, status, token, down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra.embedded.proc import pid_alive, process_identity
from infra.stackfile import StackFile, StackPids
from services.tokens import verify_token

FLASHSALE = [sys.executable, "-m", "infra.cli"]


def run(
    *args: str, state_dir: Path, timeout: float = 180, partitions: int | None = 4
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_STATE_DIR"] = str(state_dir)
    env["FLASHSALE_POSTGRES_FSYNC"] = "false"
    if partitions is not None:
        env["FLASHSALE_PARTITIONS"] = str(partitions)
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

        # From a shell without FLASHSALE_PARTITIONS: the stack's 4 partitions count,
        # not the default 12, so 5 consumers are one too many.
        grown = run("consumers", "scale", "5", state_dir=state_dir, partitions=None)
        assert grown.returncode == 0, grown.stderr
        assert "5 consumers for 4 partitions" in grown.stderr, grown.stderr
        assert "the rebalance took" in grown.stderr
        scaled = json.loads((state_dir / "stack.json").read_text())["pids"]["consumers"]
        assert len(scaled) == 5 and all(pid_alive(pid) for pid in scaled)
        shrunk = run("consumers", "scale", "1", state_dir=state_dir)
        assert shrunk.returncode == 0, shrunk.stderr
        remaining = json.loads((state_dir / "stack.json").read_text())["pids"]["consumers"]
        assert len(remaining) == 1 and not any(pid_alive(p) for p in set(scaled) - set(remaining))
        every_pid += scaled

        status = run("status", state_dir=state_dir)
        assert status.returncode == 0, status.stderr
        assert "partitions" in status.stdout and "consumer-" in status.stdout

        watched = run("status", "--watch", "--interval", "0.2", "--count", "2", state_dir=state_dir)
        assert watched.returncode == 0, watched.stderr
        assert "partitions" in watched.stdout and "throughput" in watched.stdout
    finally:
        stopped = run("down", state_dir=state_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(pid_alive(pid) for pid in every_pid)
    assert not (state_dir / "stack.json").exists()
    assert (state_dir / "postgres" / "pgdata" / "PG_VERSION").exists()  # data stays on disk

    _up_again_with_fewer_partitions(state_dir)


def _up_again_with_fewer_partitions(state_dir: Path) -> None:
    """The same state folder with fewer partitions: lease rows 2-3 keep owners
    that no longer exist, and must not hold up the start."""
    fewer = run(
        "up", "--detach", "--consumers", "1", "--port", "0", state_dir=state_dir, partitions=2
    )
    try:
        assert fewer.returncode == 0, fewer.stderr
        status = run("status", state_dir=state_dir)
        assert status.returncode == 0, status.stderr
        database_url = json.loads((state_dir / "stack.json").read_text())["database_url"]
        # A scale racing a down: whichever takes the stack lock first, no consumer is left.
        with ThreadPoolExecutor(max_workers=1) as pool:
            scaling = pool.submit(run, "consumers", "scale", "2", state_dir=state_dir)
            stopped = run("down", state_dir=state_dir)
            scaling.result(timeout=200)
        assert stopped.returncode == 0, stopped.stderr
        assert _consumers_of(database_url) == []
    finally:
        run("down", state_dir=state_dir)


def _consumers_of(database_url: str) -> list[int]:
    """Live consumer processes, whoever started them, of the stack with this database."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"FLASHSALE_DATABASE_URL={database_url}".encode() in variables
            and any(v.startswith(b"FLASHSALE_CONSUMER_NAME=") for v in variables)
            and pid_alive(int(environ.parent.name))
        ):
            found.append(int(environ.parent.name))
    return found


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


def test_token_and_help_import_no_service_client(tmp_path: Path) -> None:
    """`flashsale token` and `--help` start fast: no Kafka, Postgres, Redis or HTTP client."""
    heavy = ("aiohttp", "asyncpg", "aiokafka", "redis", "locust", "rich")
    probe = (
        "import sys\n"
        "from infra.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_SECRET"] = "s" * 40
    for args in (["token", "alice", "bob"], ["--help"], ["status", "--help"]):
        result = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
        assert "LOADED []" in result.stderr, (args, result.stderr)
    assert len(result.stdout.splitlines()) > 5  # the help was printed


def test_down_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    """A pid in stack.json that now belongs to another process (a reboot, a crash) is
    not signalled: here a live `sleep` under a consumer's pid, started after the
    identity stack.json recorded for that pid."""
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        recorded = process_identity(unrelated.pid)
        assert recorded is not None
        stack = StackFile(
            gateway_url="http://127.0.0.1:1",
            admin_token="a" * 40,
            secret="s" * 40,
            database_url="postgresql://127.0.0.1:1/none",
            redis_url="redis://127.0.0.1:1",
            redis_cluster=False,
            kafka_bootstrap="127.0.0.1:1",
            postgres_port=1,
            redis_ports=[],
            kafka_port=1,
            gateway_port=1,
            consumer_names=["consumer-0"],
            pids=StackPids(consumers=[unrelated.pid]),
            # What the pid was when the stack started: another start time (and command).
            identities={str(unrelated.pid): _earlier(recorded)},
        )
        stack.save(tmp_path)
        result = run("down", state_dir=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "no longer the process" in result.stderr
        assert unrelated.poll() is None and pid_alive(unrelated.pid)
    finally:
        unrelated.kill()
        unrelated.wait()


def _earlier(identity: str) -> str:
    """The identity of a process that had the same pid before: it started earlier."""
    start, _ = identity.split(" ", 1)
    boot, ticks = start.rsplit(":", 1)
    return f"{boot}:{int(ticks) - 1} python -m consumers"


def _child_running(parent: int, marker: str) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == parent and marker in cmdline:
            return int(stat.parent.name)
    return None


def test_ctrl_c_before_the_gateway_is_ready_stops_it(state_root: Path) -> None:
    """The gateway is frozen (SIGSTOP) as soon as `up` spawns it, so it cannot get
    ready; Ctrl-C then must still stop it, not only what was ready."""
    state_dir = state_root / "cli-interrupted"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update(
        FLASHSALE_STATE_DIR=str(state_dir),
        FLASHSALE_POSTGRES_FSYNC="false",
        FLASHSALE_PARTITIONS="4",
    )
    process = subprocess.Popen(
        [*FLASHSALE, "up", "--consumers", "0", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    gateway = None
    try:
        deadline = time.monotonic() + 120
        while gateway is None:
            assert process.poll() is None and time.monotonic() < deadline, "no gateway spawned"
            gateway = _child_running(process.pid, "-m gateway")
            time.sleep(0.02)
        os.kill(gateway, signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 130, output
        assert "stopping what was started" in output
        assert not pid_alive(gateway)
        assert not (state_dir / "stack.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
        if gateway is not None and pid_alive(gateway):
            os.kill(gateway, signal.SIGKILL)
