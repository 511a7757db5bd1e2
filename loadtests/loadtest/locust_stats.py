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


def combine(parts: Iterable[Iterable[EndpointStats]]) -> list[EndpointStats]:
    """The statistics of several Locust workers as one report: per request name and
    method, counts and histograms add up."""
    merged: dict[tuple[str, str], EndpointStats] = {}
    for part in parts:
        for entry in part:
            seen = merged.get((entry.name, entry.method))
            merged[(entry.name, entry.method)] = entry if seen is None else _add(seen, entry)
    return sorted(merged.values(), key=lambda entry: entry.name)


def _add(one: EndpointStats, other: EndpointStats) -> EndpointStats:
    histogram = Counter(one.histogram)
    histogram.update(other.histogram)
    return EndpointStats(
        one.name,
        one.method,
        one.requests + other.requests,
        one.failures + other.failures,
        dict(histogram),
    )


def save_stats(path: Path, entries: Iterable[EndpointStats]) -> None:
    """Entries in the part of Locust's `--json-file` format that `load_stats` reads."""
    raw = [
        {
            "name": entry.name,
            "method": entry.method,
            "num_requests": entry.requests,
            "num_failures": entry.failures,
            "response_times": {str(ms): count for ms, count in sorted(entry.histogram.items())},
        }
        for entry in entries
    ]
    path.write_text(json.dumps(raw, indent=1))


def load_stats(path: Path) -> list[EndpointStats]:
    """Entries of a `locust --json-file` report (Locust writes it once, when it stops)."""
    raw = json.loads(path.read_text())
    return sorted((_entry(item) for item in raw), key=lambda entry: entry.name)
