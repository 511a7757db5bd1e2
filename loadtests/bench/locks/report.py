"""The `locks` object of `flashsale bench --json` (api.md), from the phase's figures."""

from __future__ import annotations

from typing import Any

from loadtests.bench.locks.faults import Round
from loadtests.bench.locks.figures import (
    FAILOVER_TTL_S,
    NO_FAILOVER,
    PAUSE_S,
    PAUSE_TTL_S,
    DesignFigures,
)


def locks_json(figures: dict[str, DesignFigures]) -> dict[str, Any]:
    return {design: _design_json(figure) for design, figure in figures.items()}


def _design_json(figures: DesignFigures) -> dict[str, Any]:
    spike = figures.spike
    out: dict[str, Any] = {
        "library": figures.library,
        "answered_per_s": None if spike is None else round(spike.load.answered_per_s, 1),
        "oversold_under_pause": _oversold(figures.pause),
        "oversold_under_failover": _oversold(figures.failover),
        "stock": None if spike is None or spike.tally is None else spike.tally.stock,
    }
    if spike is not None:
        out["requests"] = spike.load.requests
        out["p99_ms"] = round(spike.load.percentile_ms(0.99), 2)
        if spike.tally is not None:
            out["confirmed"] = spike.tally.confirmed
            out["oversold"] = spike.tally.oversold
    out["pause"] = _rounds_json(figures.pause, {"lock_ttl_s": PAUSE_TTL_S, "pause_s": PAUSE_S})
    if figures.failover is None:
        out["failover"] = None
        out["failover_not_measured"] = NO_FAILOVER.get(figures.design, "")
    else:
        out["failover"] = _rounds_json(figures.failover, {"lock_ttl_s": FAILOVER_TTL_S})
    if figures.failover_two_of_three is not None:
        # What the majority does not protect: two of its three nodes failed over.
        out["oversold_under_failover_of_two_nodes"] = _oversold(figures.failover_two_of_three)
        out["failover_of_two_nodes"] = _rounds_json(figures.failover_two_of_three, {})
    return out


def _oversold(rounds: list[Round] | None) -> int | None:
    return None if rounds is None else sum(r.oversold for r in rounds)


def _rounds_json(rounds: list[Round], extra: dict[str, float]) -> dict[str, Any]:
    return {
        "rounds": len(rounds),
        "stock_per_round": rounds[0].stock if rounds else None,
        "sold_per_round": [r.sold for r in rounds],
        **extra,
        # Checked in each round: the fault was really injected.
        "fault_evidence": all(all(r.evidence.values()) for r in rounds),
        "outcomes": _merge([r.outcomes for r in rounds]),
    }


def _merge(outcomes: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for counts in outcomes:
        for key, n in counts.items():
            merged[key] = merged.get(key, 0) + n
    return dict(sorted(merged.items()))
