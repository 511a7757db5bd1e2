"""Starting and stopping the baseline server processes, each in one `async with`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp

from loadtests.bench.baselines import BaselineConfig, server_arguments
from loadtests.bench.errors import BenchError

READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.05
STOP_GRACE_S = 5.0
BACKLOG = 4096
LOG_TAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class RunningServer:
    name: str
    url: str
    pids: tuple[int, ...]  # every process answering on the url (they share its socket)


@contextlib.asynccontextmanager
async def baseline_servers(
    configs: dict[str, BaselineConfig], log_dir: Path
) -> AsyncIterator[dict[str, RunningServer]]:
    """Baseline server processes by name, started together (each on a socket we bind)
    and all stopped on exit, whatever happens."""
    async with contextlib.AsyncExitStack() as stack:
        spawned: dict[str, tuple[list[asyncio.subprocess.Process], str]] = {}
        for name, config in configs.items():
            processes, port = await _spawn(config, log_dir / f"{name}.log")
            for process in processes:
                stack.push_async_callback(stop_server, process)
            spawned[name] = (processes, f"http://127.0.0.1:{port}")
        await asyncio.gather(
            *(
                wait_ready(url, process, log_dir / f"{name}.log", name)
                for name, (processes, url) in spawned.items()
                for process in processes
            )
        )
        yield {
            name: RunningServer(name, url, tuple(p.pid for p in processes))
            for name, (processes, url) in spawned.items()
        }


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    return sock


async def _spawn(
    config: BaselineConfig, log_path: Path
) -> tuple[list[asyncio.subprocess.Process], int]:
    return await spawn_servers(
        ["loadtests.bench.baselines", *server_arguments(config)],
        log_path,
        config.processes,
    )


async def spawn_server(
    module_args: list[str], log_path: Path
) -> tuple[asyncio.subprocess.Process, int]:
    """`python -m MODULE ARGS --fd N`: the child inherits the listening socket (no
    race for a free port)."""
    processes, port = await spawn_servers(module_args, log_path, 1)
    return processes[0], port


async def spawn_servers(
    module_args: list[str], log_path: Path, copies: int
) -> tuple[list[asyncio.subprocess.Process], int]:
    """`copies` processes accepting on one inherited listening socket (pre-fork
    style: the kernel hands each connection to one of them)."""
    await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
    log = await asyncio.to_thread(log_path.open, "ab")
    with log, _listening_socket() as sock:
        port = int(sock.getsockname()[1])
        processes = [await _exec(module_args, log, sock) for _ in range(copies)]
    return processes, port


async def _exec(
    module_args: list[str], log: BinaryIO, sock: socket.socket
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *module_args,
        "--fd",
        str(sock.fileno()),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=(sock.fileno(),),
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it.
        start_new_session=True,
    )


async def wait_ready(
    url: str, process: asyncio.subprocess.Process, log_path: Path, name: str
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise BenchError(f"{name} server exited at start:\n{await _tail(log_path)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(READY_POLL_S)
    raise BenchError(f"{name} server not ready in {READY_TIMEOUT_S:.0f}s:\n{await _tail(log_path)}")


async def _tail(log_path: Path) -> str:
    try:
        text = await asyncio.to_thread(log_path.read_text, errors="replace")
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:]


async def stop_server(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after a grace period; harmless when it already exited."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    await process.wait()
