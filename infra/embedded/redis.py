"""Embedded `redis-server`: one node, or a 3-master Redis Cluster, on free ports."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.embedded.proc import (
    free_port,
    log_tail,
    pid_alive,
    port_answers,
    require_free_port,
    spawn,
    stop_child,
    wait_until,
)
from services.errors import ServiceStartError

INSTALL_HINT = "install Redis 7 (apt-get install redis-server)"
# The cluster bus listens on port + 10000, so cluster ports must leave room for it.
CLUSTER_MAX_PORT = 55535
CLUSTER_NODES = 3
CLI_TIMEOUT_S = 5


def redis_binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise ServiceStartError(f"missing binary {name}: {INSTALL_HINT}")
    return found


def redis_cli(port: int, *args: str) -> str:
    try:
        result = subprocess.run(
            [redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=CLI_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout.strip()


@dataclass
class RedisNode:
    root: Path
    port: int = 0
    cluster: bool = False
    extra_address: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.root / f"redis-{self.port}.log"

    def start(self, load_from: Path | None = None) -> None:
        """Start empty, or holding the dataset of the RDB file `load_from`."""
        if self.port == 0:
            self.port = free_port(CLUSTER_MAX_PORT if self.cluster else 65535)
        self.root.mkdir(parents=True, exist_ok=True)
        require_free_port(self.port, "redis")
        args = [
            redis_binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            *([self.extra_address] if self.extra_address else []),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root if load_from is None else load_from.parent),
            *(["--dbfilename", load_from.name] if load_from is not None else []),
            "--protected-mode",
            "no",
            "--maxclients",
            "10000",
        ]
        if self.cluster:
            conf = self.root / f"nodes-{self.port}.conf"
            conf.unlink(missing_ok=True)
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.name,
                "--cluster-node-timeout",
                "5000",
            ]
        self.process = spawn(args, self.log_path)
        self.pid = self.process.pid
        wait_until(
            lambda: redis_cli(self.port, "PING") == "PONG",
            f"redis on port {self.port}",
            self.log_path,
            alive=lambda: self.process is not None and self.process.poll() is None,
        )

    def stop(self) -> None:
        stop_child(self.process, self.pid)
        self.process = None
        self.pid = None

    def kill(self) -> None:
        """Kill -9: the node loses everything (it keeps nothing on disk)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        self.pid = None


@dataclass
class EmbeddedRedis:
    """One Redis node, or a Redis Cluster of three masters without replicas."""

    root: Path
    cluster: bool = False
    nodes: list[RedisNode] = field(default_factory=list)
    # One node only: the lab is for partition faults, which run on a single Redis.
    extra_address: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes if node.pid is not None]

    def start(self) -> None:
        if not self.nodes:
            count = CLUSTER_NODES if self.cluster else 1
            self.nodes = [
                RedisNode(self.root, cluster=self.cluster, extra_address=self.extra_address)
                for _ in range(count)
            ]
        for node in self.nodes:
            node.start()
        if self.cluster:
            self._form_cluster()

    def _form_cluster(self) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        result = subprocess.run(
            [
                redis_binary("redis-cli"),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise ServiceStartError(f"redis cluster create failed: {result.stdout}{result.stderr}")
        first = self.nodes[0]
        wait_until(
            lambda: all(
                "cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO") for n in self.nodes
            ),
            "redis cluster state ok",
            first.log_path,
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        """FLUSHALL on every node: the data is gone, the processes and connections stay
        (an operator's mistake, or a managed Redis that came back empty)."""
        for node in self.nodes:
            if redis_cli(node.port, "FLUSHALL") != "OK":
                raise ServiceStartError(f"FLUSHALL on redis port {node.port} failed")

    def restart(self) -> None:
        """Stop and start on the same ports; the data is gone, as after a real crash."""
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            node.start()
        if self.cluster:
            self._form_cluster()

    def running(self) -> bool:
        return bool(self.nodes) and all(
            node.pid is not None and pid_alive(node.pid) and port_answers(node.port)
            for node in self.nodes
        )

    def describe_failure(self) -> str:
        return "\n".join(log_tail(node.log_path) for node in self.nodes)
