"""Helpers shared by the embedded services: free ports, readiness waits, logs, stopping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from services.errors import ServiceStartError

READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
STOP_GRACE_S = 3.0
LOG_TAIL_LINES = 20


def free_port(max_port: int = 65535) -> int:
    """A port free on 127.0.0.1 now (the OS picks; retried when above `max_port`)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port <= max_port:
            return port
    raise ServiceStartError(f"no free port at or below {max_port}")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def require_free_port(port: int, what: str) -> None:
    if not port_is_free(port):
        raise ServiceStartError(f"{what}: port {port} on 127.0.0.1 is busy")


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    what: str,
    log: Path,
    timeout_s: float = READY_TIMEOUT_S,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll `check` until true; on timeout or death, fail with the log's last lines."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise ServiceStartError(f"{what} exited during start; last log lines:\n{log_tail(log)}")
        time.sleep(POLL_INTERVAL_S)
    raise ServiceStartError(
        f"{what} not ready after {timeout_s:.0f}s; last log lines:\n{log_tail(log)}"
    )


def require_binary(path: Path | str, hint: str) -> str:
    text = str(path)
    if not os.path.isfile(text) or not os.access(text, os.X_OK):
        raise ServiceStartError(f"missing binary {text}: {hint}")
    return text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _not_zombie(pid)
    return reaped == 0


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate_pid(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL (the broker ignores SIGTERM for a while)."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(POLL_INTERVAL_S)
    kill_pid(pid)


def stop_child(process: subprocess.Popen[bytes] | None, pid: int | None) -> None:
    """Stop a service we spawned (`terminate_pid`), then reap it."""
    if pid is not None:
        terminate_pid(pid)
    if process is not None:
        process.wait(timeout=10)


def kill_pid(pid: int, timeout_s: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(POLL_INTERVAL_S)


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so Ctrl-C in a shell reaches only us), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def process_identity(pid: int) -> str | None:
    """What tells this process from a later one given the same pid: `BOOT:START COMMAND`.

    None when the process is gone. `/proc/PID/stat` field 22 is the start time in
    clock ticks since boot: no two processes of one boot share a pid and a start
    time; the boot id extends that across reboots. The command line is kept for
    the operator's messages only: it changes when a process execs (`ip netns
    exec NS python ...` becomes python under the same pid and start time).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: split after its last ")".
    start_ticks = stat.rsplit(")", 1)[1].split()[19]
    command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{boot_id}:{start_ticks} {command}"


def same_process(pid: int, identity: str | None) -> bool:
    """Whether `pid` is still the process whose identity was recorded (and alive)."""
    if identity is None or not pid_alive(pid):
        return False
    now = process_identity(pid)
    return now is not None and now.split(" ", 1)[0] == identity.split(" ", 1)[0]
