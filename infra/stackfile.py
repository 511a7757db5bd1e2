"""`.flashsale/stack.json`: where a detached stack's operators and fault tests find everything."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.embedded.proc import pid_alive, process_identity, same_process
from loadtests.sale.target import EventsAccess, FilterAccess, Target
from services.errors import FlashsaleError, StackNotRunningError
from services.settings import Settings

STACK_FILE = "stack.json"
LOCK_FILE = "stack.lock"
# A `down` may wait for a whole `consumers scale` (one rebalance wait per consumer stopped).
LOCK_TIMEOUT_S = 300.0
LOCK_POLL_S = 0.1


@dataclass
class StackPids:
    gateway: list[int] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)
    postgres: int | None = None
    redis: list[int] = field(default_factory=list)
    kafka: int | None = None

    def all(self) -> list[int]:
        singles = [p for p in (self.postgres, self.kafka) if p is not None]
        return [*self.gateway, *self.consumers, *self.redis, *singles]


@dataclass
class StackFile:
    gateway_url: str
    admin_token: str
    secret: str
    database_url: str
    redis_url: str
    redis_cluster: bool
    kafka_bootstrap: str
    postgres_port: int
    redis_ports: list[int]
    kafka_port: int
    gateway_port: int
    consumer_names: list[str]
    pids: StackPids
    supervisor_pid: int | None = None
    # The stack's settings as FLASHSALE_* variables: commands run from another
    # shell (scale, status) use these, not the caller's environment.
    settings_env: dict[str, str] = field(default_factory=dict)
    # pid -> proc.process_identity() at spawn: a pid reused after a reboot or a
    # crash is not signalled.
    identities: dict[str, str] = field(default_factory=dict)

    def identity(self, pid: int) -> str | None:
        return self.identities.get(str(pid))

    def is_ours(self, pid: int) -> bool:
        """Whether `pid` is still the process this stack started (safe to signal)."""
        if not self.identities:
            # A stack.json from before identities were recorded: only liveness is known.
            return pid_alive(pid)
        return same_process(pid, self.identity(pid))

    def record_supervisor(self, pid: int) -> None:
        """The foreground `up` that `down` stops too."""
        self.supervisor_pid = pid
        identity = process_identity(pid)
        if identity is not None:
            self.identities[str(pid)] = identity

    def settings(self) -> Settings:
        """The running stack's settings (a file from before `settings_env`: the caller's env)."""
        return Settings.from_env(
            self.settings_env or None,
            database_url=self.database_url,
            redis_url=self.redis_url,
            redis_cluster=self.redis_cluster,
            kafka_bootstrap=self.kafka_bootstrap,
            admin_token=self.admin_token,
            secret=self.secret,
        )

    def target(self) -> Target:
        """Where load drivers and checkers reach this stack."""
        settings = self.settings()
        return Target(
            self.gateway_url,
            self.admin_token,
            self.secret,
            self.database_url,
            FilterAccess(self.redis_url, self.redis_cluster, settings.stock_shards),
            EventsAccess(self.kafka_bootstrap, settings.events_topic),
        )

    def save(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        # It holds the admin token and the signing secret: 0600 from its creation,
        # never readable by others for an instant.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> StackFile:
        path = state_dir / STACK_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise StackNotRunningError(
                f"no stack file at {path}: is `flashsale up` running?"
            ) from exc
        data["pids"] = StackPids(**data["pids"])
        return cls(**data)

    @staticmethod
    def remove(state_dir: Path) -> None:
        (state_dir / STACK_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def stack_lock(state_dir: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Held around every read-modify-write of stack.json (up, down, consumers scale).

    An flock is released by the kernel when its holder dies, so a killed command
    never leaves the stack locked.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FlashsaleError(
                        f"another flashsale command holds {state_dir / LOCK_FILE} "
                        f"for more than {timeout_s:.0f}s"
                    ) from None
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
