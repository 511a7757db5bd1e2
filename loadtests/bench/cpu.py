"""CPU time of a system's processes, for `cpu_us_per_purchase`.

Throughput on a 2-core machine shared with the load generator says little about
what a purchase costs; CPU time does. Read from /proc (utime + stime of each
process). Postgres forks a backend per connection: the postmaster's children
are counted while they live, and through the postmaster's `cutime`/`cstime`
once it has reaped them, so a backend that came and went is not lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Fields of /proc/PID/stat after the command name: state is index 0.
PPID, UTIME, STIME, CUTIME, CSTIME = 1, 11, 12, 13, 14


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def own_cpu_s(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[UTIME]) + int(fields[STIME])) / TICKS_PER_S


def tree_cpu_s(pid: int) -> float:
    """A server and the workers it forks: itself, its live children, and the
    children it has reaped already."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    total = sum(int(fields[n]) for n in (UTIME, STIME, CUTIME, CSTIME)) / TICKS_PER_S
    return total + sum(own_cpu_s(child) for child in _children(pid))


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[PPID]) == parent:
                children.append(int(entry))
    return children


@dataclass(frozen=True, slots=True)
class SystemProcesses:
    """The processes one system runs on: single ones, and forking servers."""

    single: tuple[int, ...] = ()
    forking: tuple[int, ...] = ()

    def cpu_s(self) -> float:
        return sum(own_cpu_s(pid) for pid in self.single) + sum(
            tree_cpu_s(pid) for pid in self.forking
        )


@dataclass
class CpuMeter:
    """CPU seconds of each system's processes between `start` and `stop`."""

    systems: Mapping[str, SystemProcesses]
    _started: dict[str, float] | None = None

    def start(self) -> None:
        self._started = {name: p.cpu_s() for name, p in self.systems.items()}

    def stop(self) -> dict[str, float]:
        assert self._started is not None, "start() first"
        return {name: max(0.0, p.cpu_s() - self._started[name]) for name, p in self.systems.items()}


# A system's processes by the part they play (gateway, redis, postgres, ...).
Parts = dict[str, SystemProcesses]


def per_unit_us(cpu_s: float, units: int) -> float | None:
    return None if units <= 0 else round(cpu_s * 1e6 / units, 1)


def pids(values: Iterable[int | None]) -> tuple[int, ...]:
    return tuple(pid for pid in values if pid)
