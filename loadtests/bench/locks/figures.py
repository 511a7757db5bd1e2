"""What the `locks` phase measures of each design, and the settings its report
states beside the figures (the report reads these without importing the phase)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtests.bench.locks.designs import ETCD_LEASE, ETCD_LEASE_FENCED, FLASHSALE, PG_ADVISORY
from loadtests.bench.locks.faults import Round
from loadtests.bench.runs import SystemRun

PAUSE_TTL_S = 1.0  # etcd rounds it up to its 2 s minimum
PAUSE_S = 5.0  # past every TTL, and long enough for the others to start and buy
FAILOVER_TTL_S = 10.0  # the lock cannot expire during a round: only the failover acts
RAFT = (
    "not measured: the embedded etcd is one member; etcd grants a lock only once a Raft"
    " majority has it, so the asynchronous-replica failover of Redis has no counterpart"
)
NO_FAILOVER = {
    PG_ADVISORY: "no Redis: the lock lives in the Postgres transaction that writes",
    ETCD_LEASE: RAFT,
    ETCD_LEASE_FENCED: RAFT,
    FLASHSALE: "no lock: Postgres decides each unit under the partition lease's epoch",
}


@dataclass(slots=True)
class DesignFigures:
    design: str
    library: str
    spike: SystemRun | None = None
    pause: list[Round] = field(default_factory=list)
    failover: list[Round] | None = None  # one node failed over (of one, or of Redlock's 3)
    failover_two_of_three: list[Round] | None = None  # Redlock only
