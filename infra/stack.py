"""The embedded stack: Postgres, Redis (or a Redis Cluster), the broker, gateways, consumers."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.embedded.broker import EmbeddedBroker
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.proc import (
    STOP_GRACE_S,
    free_port,
    port_is_free,
    process_identity,
    terminate_pid,
)
from infra.embedded.redis import EmbeddedRedis
from infra.embedded.standby import EmbeddedStandby
from infra.netlab import NetLab
from infra.processes import start_consumer, start_gateway
from infra.stackfile import StackFile, StackPids
from infra.statesecrets import stack_secrets
from services.errors import ServiceStartError, UnavailableError
from services.resources import open_core
from services.settings import Settings
from services.store.leases import ensure_leases, list_leases, release_leases_beyond
from services.topics import ensure_topic, partition_count

log = logging.getLogger(__name__)

CONSUMERS_READY_TIMEOUT_S = 90.0
# Leaving the group cleanly takes a batch and a rebalance.
CONSUMER_STOP_GRACE_S = 15.0
Progress = Callable[[str], None]
# Per-process settings that are not the stack's.
_PROCESS_SETTINGS = ("FLASHSALE_CONSUMER_NAME", "FLASHSALE_FAILPOINT")


def _quiet(_: str) -> None:
    return None


@dataclass
class EmbeddedStack:
    """Starts every part as a child process; `stack_file()` tells where each one is."""

    state_dir: Path
    settings: Settings
    redis_cluster: bool = False
    # With a network lab (chaos' partition faults), each consumer gets a namespace.
    netlab: NetLab | None = None
    postgres: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedis = field(init=False)
    broker: EmbeddedBroker = field(init=False)
    # Settings' postgres_standby: a synchronous streaming standby of `postgres`.
    standby: EmbeddedStandby | None = field(init=False, default=None)
    gateway_pids: list[int] = field(default_factory=list)
    consumer_pids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        lab = self.netlab
        self.postgres = EmbeddedPostgres(
            self.state_dir / "postgres",
            fsync=self.settings.postgres_fsync,
            extra_address=lab.address("postgres") if lab else None,
        )
        self.redis = EmbeddedRedis(
            self.state_dir / "redis",
            cluster=self.redis_cluster,
            extra_address=lab.address("redis") if lab else None,
        )
        self.broker = EmbeddedBroker(self.state_dir / "kafka")
        if self.settings.postgres_standby:
            self.standby = EmbeddedStandby(
                self.state_dir / "postgres-standby", fsync=True, primary=self.postgres
            )
        if lab:
            self.broker.host = lab.address("broker")

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def start_services(self, progress: Progress = _quiet) -> Settings:
        """Postgres, Redis and the broker, then the schema and the topic."""
        # Before anything starts: a short explicit secret fails here, with nothing to stop.
        self.settings = stack_secrets(self.state_dir, self.settings)
        progress("starting postgres")
        self.postgres.start()
        if self.standby is not None:
            progress("starting a synchronous streaming standby of postgres")
            self.standby.start()
            self.standby.make_synchronous()
        progress(f"starting redis{' cluster' if self.redis_cluster else ''}")
        self.redis.start()
        progress("starting broker")
        self.broker.start()
        self.settings = self.settings.replace(
            database_url=self.postgres.url,
            redis_url=self.redis.url,
            redis_cluster=self.redis_cluster,
            kafka_bootstrap=self.broker.bootstrap,
            state_dir=self.state_dir,
        )
        progress("applying migrations, creating topic")
        asyncio.run(_prepare(self.settings))
        return self.settings

    def start_processes(
        self, consumers: int, progress: Progress = _quiet, gateways: int = 1
    ) -> None:
        if self.settings.gateway_port == 0 or not port_is_free(self.settings.gateway_port):
            self.settings = self.settings.replace(gateway_port=free_port())
        progress(f"starting {consumers} consumer(s)")
        for index in range(consumers):
            self.add_consumer(f"consumer-{index}-{secrets.token_hex(2)}")
        progress(f"starting {gateways} gateway(s)")
        for index in range(gateways):
            # Gateways share the port (SO_REUSEPORT): the kernel spreads connections.
            start_gateway(self.settings, self.log_dir, index, on_spawn=self.gateway_pids.append)
        if consumers:
            progress("waiting for consumers to own every partition")
            wait_for_consumers(self.settings, list(self.consumer_pids))

    def add_consumer(self, name: str, failpoint: str = "") -> int:
        """Start one more consumer; `failpoint` (tests only) makes it die at that step."""
        settings = self.settings.replace(failpoint=failpoint)
        prefix: list[str] = []
        if self.netlab is not None:
            prefix = self.netlab.exec_prefix(self.netlab.namespace_for(name))
            settings = self._as_guest(settings, self.netlab)
        pid = start_consumer(settings, self.log_dir, name, prefix)
        self.consumer_pids[name] = pid
        return pid

    def scale_to(self, count: int) -> None:
        """Grow or shrink this object's consumers to `count`, one departure per
        rebalance (as `consumers scale` does), until the survivors own every partition."""
        names = list(self.consumer_pids)
        while len(names) > count:
            terminate_pid(self.consumer_pids.pop(names.pop()), grace_s=CONSUMER_STOP_GRACE_S)
            if names:
                wait_for_consumers(self.settings, names)
        while len(names) < count:
            names.append(f"consumer-{len(names)}-{secrets.token_hex(2)}")
            self.add_consumer(names[-1])
        if names:
            wait_for_consumers(self.settings, names)

    @staticmethod
    def _as_guest(settings: Settings, lab: NetLab) -> Settings:
        """Loopback inside a namespace is its own: reach the services on the bridge."""
        return settings.replace(
            database_url=settings.database_url.replace(
                "@127.0.0.1:", f"@{lab.address('postgres')}:"
            ),
            redis_url=settings.redis_url.replace("//127.0.0.1:", f"//{lab.address('redis')}:"),
        )

    def stack_file(self) -> StackFile:
        pids = StackPids(
            gateway=list(self.gateway_pids),
            consumers=list(self.consumer_pids.values()),
            postgres=self.postgres.pid(),
            redis=self.redis.pids,
            kafka=self.broker.pid,
        )
        env = {k: v for k, v in self.settings.as_env().items() if k not in _PROCESS_SETTINGS}
        return StackFile(
            gateway_url=f"http://{self.settings.gateway_host}:{self.settings.gateway_port}",
            admin_token=self.settings.admin_token,
            secret=self.settings.secret,
            database_url=self.settings.database_url,
            redis_url=self.settings.redis_url,
            redis_cluster=self.redis_cluster,
            kafka_bootstrap=self.settings.kafka_bootstrap,
            postgres_port=self.postgres.port,
            redis_ports=[node.port for node in self.redis.nodes],
            kafka_port=self.broker.port,
            gateway_port=self.settings.gateway_port,
            consumer_names=list(self.consumer_pids),
            pids=pids,
            settings_env=env,
            identities=identities(pids.all()),
        )

    def stop(self, progress: Progress = _quiet) -> None:
        """Everything this object started; safe to call twice."""
        progress("stopping gateway and consumers")
        for pid in [*self.gateway_pids, *self.consumer_pids.values()]:
            terminate_pid(pid, grace_s=10)
        self.gateway_pids.clear()
        self.consumer_pids.clear()
        progress("stopping broker, redis, postgres")
        self.broker.stop()
        self.redis.stop()
        # The primary first: with its standby gone, a last commit would wait for it.
        self.postgres.stop()
        if self.standby is not None:
            self.standby.stop()


def identities(pids: list[int]) -> dict[str, str]:
    """pid -> process identity, for the pids still running."""
    found = {str(pid): process_identity(pid) for pid in pids}
    return {pid: identity for pid, identity in found.items() if identity is not None}


async def _prepare(settings: Settings) -> None:
    async with open_core(settings, run_migrations=True) as core:
        await ensure_leases(core.pool, settings.topic, settings.partitions)
        # Rows of partitions this topic no longer has (a state folder that ran
        # more partitions) keep owners that no longer exist: nobody will take
        # them, so readiness must not wait for them and status must not show them.
        await release_leases_beyond(core.pool, settings.topic, settings.partitions)
    await ensure_topic(settings.kafka_bootstrap, settings.topic, settings.partitions)
    await ensure_topic(settings.kafka_bootstrap, settings.events_topic, settings.partitions)


def wait_for_consumers(
    settings: Settings, names: list[str], timeout_s: float = CONSUMERS_READY_TIMEOUT_S
) -> None:
    """Until every partition's lease is held by one of `names`."""
    asyncio.run(_wait_for_owners(settings, set(names), timeout_s))


async def _wait_for_owners(settings: Settings, names: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # Only the partitions the topic has: rows beyond them (a state folder that ran
    # more partitions, a broker that re-created the topic) are history.
    partitions = await topic_partitions(settings)
    async with open_core(settings) as core:
        while time.monotonic() < deadline:
            leases = await list_leases(core.pool, settings.topic, partitions)
            owners = {lease.owner for lease in leases}
            if leases and owners <= names and len(leases) >= partitions:
                return
            await asyncio.sleep(0.2)
    raise ServiceStartError(
        f"consumers {sorted(names)} did not take every partition within {timeout_s:.0f}s; "
        f"see {settings.state_dir / 'logs'}"
    )


async def topic_partitions(settings: Settings) -> int:
    """The partitions the broker has for the topic now (the settings' count if it cannot say)."""
    try:
        found = await partition_count(settings.kafka_bootstrap, settings.topic)
    except UnavailableError:
        found = None
    return found or settings.partitions


def stop_from_file(state_dir: Path, stack: StackFile, progress: Progress = _quiet) -> list[int]:
    """Stop what `up --detach` started; returns pids that were still alive after stopping.

    Only pids that are still the process that was started are signalled: after a
    reboot or a crash, a pid in stack.json may belong to anything.
    """
    progress("stopping gateway and consumers")
    for pid in [*stack.pids.gateway, *stack.pids.consumers]:
        _terminate_ours(stack, pid, progress, grace_s=10)
    progress("stopping broker and redis")
    for pid in [*([stack.pids.kafka] if stack.pids.kafka else []), *stack.pids.redis]:
        _terminate_ours(stack, pid, progress)
    progress("stopping postgres")
    EmbeddedPostgres(state_dir / "postgres", port=stack.postgres_port).stop()
    if stack.supervisor_pid:
        _terminate_ours(stack, stack.supervisor_pid, progress)
    return [pid for pid in stack.pids.all() if stack.is_ours(pid)]


def _terminate_ours(
    stack: StackFile, pid: int, progress: Progress, grace_s: float = STOP_GRACE_S
) -> None:
    if stack.is_ours(pid):
        terminate_pid(pid, grace_s=grace_s)
    elif (now := process_identity(pid)) is not None:
        was = (stack.identity(pid) or " ?").split(" ", 1)[1]
        progress(
            f"pid {pid} is no longer the process the stack started ({was}); "
            f"now {now.split(' ', 1)[1]}: left alone"
        )


def stack_is_running(stack: StackFile) -> bool:
    return any(stack.is_ours(pid) for pid in stack.pids.all())
