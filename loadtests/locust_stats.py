"""Reading Locust's `--json-file` report: per-request counts and latency histograms."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class EndpointStats:
    name: str
    method: str
    requests: int
    failures: int
    # Locust's histogram: response time in ms (rounded as Locust rounds) -> requests.
    histogram: Mapping[int, int] = field(default_factory=dict)

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.histogram, 0.50)

    @property
    def p99_ms(self) -> float:
        return percentile_ms(self.histogram, 0.99)


def percentile_ms(histogram: Mapping[int, int], fraction: float) -> float:
    """The smallest response time at or below which `fraction` of the requests fall."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0
    wanted = fraction * total
    seen = 0
    for millis in sorted(histogram):
        seen += histogram[millis]
        if seen >= wanted:
            return float(millis)
    return float(max(histogram))


def merge(entries: Iterable[EndpointStats]) -> Counter[int]:
    merged: Counter[int] = Counter()
    for entry in entries:
        merged.update(entry.histogram)
    return merged


def _entry(raw: Mapping[str, Any]) -> EndpointStats:
    histogram = {int(float(ms)): int(count) for ms, count in raw["response_times"].items()}
    return EndpointStats(
        name=str(raw["name"]),
        method=str(raw["method"]),
        requests=int(raw["num_requests"]),
        failures=int(raw["num_failures"]),
        histogram=histogram,
    )


def load_stats(path: Path) -> list[EndpointStats]:
    """Entries of a `locust --json-file` report (Locust writes it once, when it stops)."""
    raw = json.loads(path.read_text())
    return sorted((_entry(item) for item in raw), key=lambda entry: entry.name)
