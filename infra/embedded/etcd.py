"""Embedded `etcd` (Debian's etcd-server): one member on free ports, data in a temp folder.

The `locks` phase of `flashsale bench` measures etcd's lease lock beside the
Redis and Postgres designs; nothing else in flashsale uses etcd.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.embedded.proc import (
    free_port,
    require_free_port,
    spawn,
    stop_child,
    wait_until,
)
from services.errors import ServiceStartError

INSTALL_HINT = "install etcd (apt-get install etcd-server)"
HEALTH_TIMEOUT_S = 1.0


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if not found:
        raise ServiceStartError(f"missing binary etcd: {INSTALL_HINT}")
    return found


def _healthy(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/health"
    with (
        contextlib.suppress(OSError, urllib.error.URLError),
        urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response,
    ):
        return b'"health":"true"' in response.read()
    return False


@dataclass
class EmbeddedEtcd:
    root: Path
    port: int = 0
    peer_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.root / "etcd.log"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.port = self.port or free_port()
        self.peer_port = self.peer_port or free_port()
        require_free_port(self.port, "etcd")
        require_free_port(self.peer_port, "etcd peer")
        data = self.root / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(),
            "--name",
            "bench",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"bench={peer}",
        ]
        self.process = spawn(args, self.log_path)
        wait_until(
            lambda: _healthy(self.port),
            f"etcd on port {self.port}",
            self.log_path,
            alive=lambda: self.process is not None and self.process.poll() is None,
        )

    def stop(self) -> None:
        stop_child(self.process, None if self.process is None else self.process.pid)
        self.process = None
