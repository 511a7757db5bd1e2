"""An embedded PostgreSQL 15: initdb + pg_ctl into a state folder, on a free port.

initdb refuses to run as root, so when we are root every server command runs
as the `postgres` user and the data folder belongs to it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.embedded.proc import (
    free_port,
    log_tail,
    port_answers,
    require_binary,
    require_free_port,
    wait_until,
)
from services.errors import ServiceStartError

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)
DATABASE = "flashsale"
SERVICE_USER = "postgres"
PG_CTL_TIMEOUT_S = 60


def pg_bin_dir() -> Path:
    for candidate in PG_BIN_CANDIDATES:
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise ServiceStartError(
        "missing binary pg_ctl: install PostgreSQL 15 (apt-get install postgresql-15)"
    )


@dataclass
class EmbeddedPostgres:
    """One Postgres server. `start()` is idempotent per data folder; `restart()` keeps the port."""

    root: Path
    port: int = 0
    fsync: bool = True
    # A second address to listen on (the network lab's), reachable from namespaces.
    extra_address: str | None = None
    bin_dir: Path = field(default_factory=pg_bin_dir)
    # More `-c name=value` server options (a standby's hot_standby, say).
    extra_options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = require_binary(
            self.bin_dir / args[0], "install PostgreSQL 15 (apt-get install postgresql-15)"
        )
        as_root = os.geteuid() == 0
        result = subprocess.run(
            [binary, *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            timeout=PG_CTL_TIMEOUT_S,
            user=SERVICE_USER if as_root else None,
            group=SERVICE_USER if as_root else None,
        )
        if check and result.returncode != 0:
            raise ServiceStartError(
                f"{args[0]} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
                f"\nlast log lines:\n{log_tail(self.log_path)}"
            )
        return result

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._own(self.root)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SERVICE_USER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        self.init()
        if self.port == 0:
            self.port = free_port()
        require_free_port(self.port, "postgres")
        self._own(self.root)
        if not self.log_path.exists():
            self.log_path.touch()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        self._trust_extra_network()
        options = " ".join(
            [
                f"-p {self.port}",
                f"-c listen_addresses={self._listen_addresses()}",
                f"-c unix_socket_directories={self.data_dir}",
                f"-c fsync={'on' if self.fsync else 'off'}",
                # Commits stay synchronous even in tests: a crashed server must not
                # forget a batch the consumer already settled in Redis.
                "-c synchronous_commit=on",
                f"-c full_page_writes={'on' if self.fsync else 'off'}",
                "-c max_connections=300",
                "-c shared_buffers=128MB",
                *self.extra_options,
            ]
        )
        result = self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceStartError(
                f"postgres did not start on port {self.port}: {result.stdout.strip()} "
                f"{result.stderr.strip()}\nlast log lines:\n{log_tail(self.log_path)}"
            )
        wait_until(lambda: port_answers(self.port), f"postgres on port {self.port}", self.log_path)
        self._create_database()

    def _listen_addresses(self) -> str:
        return ",".join(["127.0.0.1", *([self.extra_address] if self.extra_address else [])])

    def _trust_extra_network(self) -> None:
        """initdb trusts loopback only; the lab's namespaces connect from its /24."""
        if not self.extra_address:
            return
        network = self.extra_address.rsplit(".", 1)[0] + ".0/24"
        line = f"host all all {network} trust"
        hba = self.data_dir / "pg_hba.conf"
        if line not in hba.read_text().splitlines():
            with hba.open("a") as out:
                out.write(line + "\n")

    def _create_database(self) -> None:
        psql = str(self.bin_dir / "psql") if (self.bin_dir / "psql").exists() else "psql"
        probe = subprocess.run(
            [psql, self.admin_url, "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{DATABASE}'"],
            capture_output=True,
            text=True,
            check=False,
            timeout=PG_CTL_TIMEOUT_S,
        )
        if probe.stdout.strip() == "1":
            return
        created = subprocess.run(
            [psql, self.admin_url, "-c", f"CREATE DATABASE {DATABASE}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=PG_CTL_TIMEOUT_S,
        )
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise ServiceStartError(f"cannot create database {DATABASE}: {created.stderr.strip()}")

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if not self.data_dir.exists() or not self.running():
            return
        self._run("pg_ctl", "stop", "-w", "-t", "30", "-D", str(self.data_dir), "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()
