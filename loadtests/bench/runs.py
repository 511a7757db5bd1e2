"""One system's run under one load: what the clients saw and what Postgres holds.

Its own module so the bench's context, its report and the locks phase all use it
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from loadtests.bench.loadgen import LoadResult
from loadtests.bench.systems import Tally

ADMITTED = 202


@dataclass(frozen=True, slots=True)
class SystemRun:
    """One system under one load: what the clients saw and what Postgres holds."""

    load: LoadResult
    tally: Tally | None
    # CPU seconds of the system's processes while it ran, by part (gateway, redis...)
    cpu_parts_s: dict[str, float] | None = None

    @property
    def cpu_s(self) -> float | None:
        return None if self.cpu_parts_s is None else sum(self.cpu_parts_s.values())

    @property
    def sellout_s(self) -> float | None:
        """From the first request to the last unit sold; None when it did not sell out."""
        tally = self.tally
        if tally is None or tally.last_sale_at is None or tally.confirmed < tally.stock:
            return None
        return tally.last_sale_at - self.load.started_at
