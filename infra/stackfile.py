"""`.flashsale/stack.json`: where a detached stack's operators and fault tests find everything."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.errors import StackNotRunningError

STACK_FILE = "stack.json"


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

    def save(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.chmod(tmp, 0o600)  # it holds the admin token and the signing secret
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
