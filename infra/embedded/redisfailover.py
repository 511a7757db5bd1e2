"""A Redis failover that loses writes, behind the embedded Redis' stable address.

A real replica (`redis-server` with `REPLICAOF`) copies the master; the link is
then cut (the replica stopped with SIGSTOP, its connection killed on the master
with `CLIENT KILL TYPE replica`, so nothing more reaches it, not even from a
socket buffer), and whatever the master acknowledges from then on exists only
there. The switch kills the master (-9), promotes the replica (`REPLICAOF NO
ONE`) and brings the promoted data up at the master's address: the promoted
replica saves its dataset (SAVE) and a node on the master's port starts from
that file. The stack's clients keep their one URL, as with a managed Redis whose
endpoint moves to the promoted replica (docs/faults.md, "Redis failover").
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from infra.embedded.proc import wait_until
from infra.embedded.redis import EmbeddedRedis, RedisNode, redis_cli
from services.errors import ServiceStartError

LINK_TIMEOUT_S = 15.0
RDB_FILE = "dump.rdb"  # redis-server's default file name, in the replica's folder
STATE_POLL_S = 0.01


def replication(port: int) -> dict[str, str]:
    """`INFO replication` of the node on `port`, as a dict (empty if it does not answer)."""
    lines = redis_cli(port, "INFO", "replication").splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


@dataclass
class RedisFailover:
    redis: EmbeddedRedis
    replica: RedisNode | None = field(default=None, init=False)

    @property
    def master(self) -> RedisNode:
        if self.redis.cluster or len(self.redis.nodes) != 1:
            raise ServiceStartError("the failover fault runs on a single Redis node")
        return self.redis.nodes[0]

    @property
    def cut_off(self) -> bool:
        return self.replica is not None

    def cut(self) -> None:
        """Start a replica, let it copy everything the master holds now, then cut
        its link: from here on the master's writes are the ones a failover loses."""
        master = self.master
        replica = RedisNode(self.redis.root / "replica")
        (replica.root / RDB_FILE).unlink(missing_ok=True)  # an earlier failover's
        replica.start()
        self.replica = replica
        _follow(replica, master.port)
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGSTOP)
        _wait_stopped(replica.pid)
        redis_cli(master.port, "CLIENT", "KILL", "TYPE", "replica")

    def switch(self) -> None:
        """Kill the master, promote the replica, bring its data up at the master's port."""
        master, replica = self.master, self.replica
        if replica is None or replica.pid is None:
            raise ServiceStartError("the failover's replica was never cut off")
        master.kill()
        os.kill(replica.pid, signal.SIGCONT)
        if redis_cli(replica.port, "REPLICAOF", "NO", "ONE") != "OK":
            raise ServiceStartError(f"promoting the replica on port {replica.port} failed")
        if redis_cli(replica.port, "SAVE") != "OK":
            raise ServiceStartError(f"saving the promoted replica on port {replica.port} failed")
        # Up at the master's port already holding the promoted data: clients see the
        # address refuse connections for a moment, never an empty or read-only node.
        master.start(load_from=replica.root / RDB_FILE)
        replica.stop()
        self.replica = None

    def abandon(self) -> None:
        """Stop a replica left over (a run that ends between cut and switch)."""
        if self.replica is not None:
            if self.replica.pid is not None:
                os.kill(self.replica.pid, signal.SIGCONT)
            self.replica.stop()
            self.replica = None


def _follow(node: RedisNode, master_port: int) -> None:
    """Make `node` a replica of `master_port` and wait until it holds everything the
    master had acknowledged when it was asked."""
    # Redis waits 5 s by default for more replicas before a diskless full sync.
    redis_cli(master_port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
    if redis_cli(node.port, "REPLICAOF", "127.0.0.1", str(master_port)) != "OK":
        raise ServiceStartError(f"REPLICAOF on redis port {node.port} failed")
    target = int(replication(master_port).get("master_repl_offset", "0"))

    def caught_up() -> bool:
        info = replication(node.port)
        return (
            info.get("master_link_status") == "up"
            and info.get("master_sync_in_progress") == "0"
            and int(info.get("slave_repl_offset", "-1")) >= target
        )

    wait_until(caught_up, f"redis on port {node.port} syncing", node.log_path, LINK_TIMEOUT_S)


def _wait_stopped(pid: int) -> None:
    """Until the kernel shows the process stopped (state T)."""
    deadline = time.monotonic() + LINK_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(STATE_POLL_S)
    raise ServiceStartError(f"redis replica pid {pid} did not stop")
