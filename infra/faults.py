"""Fault injection on an embedded stack: the faults of design.md, one function each.

Each call blocks until the fault is in place (and, for restarts, healed); async
callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass

from infra.embedded.proc import kill_pid, pid_alive, terminate_pid
from infra.netlab import NetLab
from infra.processes import start_gateway
from infra.stack import CONSUMER_STOP_GRACE_S, EmbeddedStack
from services.errors import ServiceStartError, UnavailableError
from services.topics import ensure_topic

log = logging.getLogger(__name__)

FAULTS = (
    "kill_consumer",
    "pause_consumer",
    "kill_gateway",
    "pause_gateway",
    "restart_broker",
    "restart_redis",
    "restart_postgres",
    "add_consumer",
    "remove_consumer",
    "restart_stack",
    "partition_consumer_broker",
    "partition_consumer_postgres",
    "slow_consumer",
)
# Faults that need the network lab (infra/netlab.py): root and iproute2.
NETWORK_FAULTS = frozenset(
    {"partition_consumer_broker", "partition_consumer_postgres", "slow_consumer"}
)


@dataclass
class FaultInjector:
    stack: EmbeddedStack
    _gateway_starts: int = 0
    _gateways_wanted: int = 0

    def __post_init__(self) -> None:
        self._gateways_wanted = len(self.stack.gateway_pids)

    def consumer_names(self) -> list[str]:
        return [name for name, pid in self.stack.consumer_pids.items() if pid_alive(pid)]

    def kill_consumer(self, name: str, replace: bool = True) -> str | None:
        """kill -9 one consumer (mid-batch, if traffic flows); start a fresh one."""
        pid = self.stack.consumer_pids.pop(name)
        kill_pid(pid)
        log.info("killed consumer %s (pid %d)", name, pid)
        if not replace:
            return None
        fresh = f"{name.split('-r', maxsplit=1)[0]}-r{time.monotonic_ns() % 100000}"
        self.stack.add_consumer(fresh)
        return fresh

    def pause_consumer(self, name: str, seconds: float) -> None:
        """SIGSTOP past the session timeout (the GC pause of the lock articles), then SIGCONT."""
        _pause(self.stack.consumer_pids[name], f"consumer {name}", seconds)

    def partition_consumer(self, name: str, service: str, seconds: float) -> None:
        """Cut one consumer off from `service` (the others still reach it), then heal.

        Cut from the broker, it drops out of the group while it can still write
        to Postgres: a zombie that only the lease's fence stops. Cut from
        Postgres, it keeps its partitions in the group and cannot apply them.
        """
        lab = self._lab()
        lab.cut(name, service)
        log.info("cut consumer %s off from %s for %.1fs", name, service, seconds)
        try:
            time.sleep(seconds)
        finally:
            lab.heal(name, service)

    def slow_consumer(self, name: str, seconds: float) -> None:
        """Everything one consumer sends goes through a thin pipe for a while."""
        lab = self._lab()
        lab.slow(name)
        try:
            time.sleep(seconds)
        finally:
            lab.unslow(name)

    def _lab(self) -> NetLab:
        if self.stack.netlab is None:
            raise ServiceStartError("network faults need the network lab (run as root)")
        return self.stack.netlab

    def add_consumer(self) -> str:
        name = f"consumer-x{time.monotonic_ns() % 100000}"
        self.stack.add_consumer(name)
        return name

    def remove_consumer(self, name: str) -> None:
        """Scale down by one: SIGTERM, so it leaves the group as `consumers scale` does."""
        pid = self.stack.consumer_pids.pop(name)
        terminate_pid(pid, grace_s=CONSUMER_STOP_GRACE_S)

    def gateway_count(self) -> int:
        return len(self.stack.gateway_pids)

    def kill_gateway(self, index: int) -> int:
        """kill -9 one gateway (others share its port); start a fresh one in its place."""
        pid = self.stack.gateway_pids.pop(index)
        kill_pid(pid)
        log.info("killed gateway pid %d", pid)
        self._gateway_starts += 1
        fresh = start_gateway(self.stack.settings, self.stack.log_dir, 100 + self._gateway_starts)
        self.stack.gateway_pids.append(fresh)
        return fresh

    def pause_gateway(self, index: int, seconds: float) -> None:
        """SIGSTOP: connections the kernel hands it hang, mid-admission ones too."""
        _pause(self.stack.gateway_pids[index], f"gateway {index}", seconds)

    def stop_gateways(self) -> None:
        """The first half of a whole-stack down: no new admissions, in-flight ones finish."""
        for pid in self.stack.gateway_pids:
            terminate_pid(pid, grace_s=10)
        self.stack.gateway_pids.clear()

    def restart_stack(self) -> None:
        """The rest of `down` then `up`: Postgres keeps its data folder; Redis and the
        broker come back empty; as many consumers and gateways as before."""
        consumers = max(1, len(self.stack.consumer_pids))
        gateways = max(1, self._gateways_wanted)
        port = self.stack.settings.gateway_port
        self.stack.stop()
        self.stack.start_services()
        self.stack.start_processes(consumers, gateways=gateways)
        if self.stack.settings.gateway_port != port:
            raise ServiceStartError(
                f"the gateway came back on port {self.stack.settings.gateway_port}, not {port}"
            )

    def restart_broker(self) -> None:
        """Memory storage: every topic, message, group and offset is gone.

        The topic is created again at once, as an operator whose broker lost its
        data would: left to the first client's metadata request, the embedded
        broker creates it with its own default partition count and then still
        acknowledges sends to the partitions it lacks, which nobody can read
        (docs/faults.md, "What is not guaranteed").
        """
        self.stack.broker.restart()
        settings = self.stack.settings
        try:
            for topic in (settings.topic, settings.events_topic):
                asyncio.run(ensure_topic(settings.kafka_bootstrap, topic, settings.partitions))
        except UnavailableError as exc:
            log.warning("could not create the topics again after the broker restart: %s", exc)

    def restart_redis(self) -> None:
        """Kill -9 and start empty on the same port(s)."""
        self.stack.redis.restart()

    def restart_postgres(self, down_s: float = 2.0) -> None:
        self.stack.postgres.stop("immediate")
        time.sleep(down_s)
        self.stack.postgres.start()


def _pause(pid: int, what: str, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    log.info("paused %s (pid %d) for %.1fs", what, pid, seconds)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
