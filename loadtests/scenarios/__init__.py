"""Locust flash-sale scenarios, one locustfile each, run by `loadtests.loadtest.runner`.

This package's own modules stay free of asyncio and of flashsale's services
other than `services.tokens`: the locustfiles run in a gevent-patched process.
"""

from __future__ import annotations

from pathlib import Path

SCENARIOS = ("spike", "retry-storm", "multi-item", "abusive", "cancellations")


def locustfile_path(scenario: str) -> Path:
    """The locustfile of a scenario: `retry-storm` lives in `retry_storm.py`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    return Path(__file__).with_name(scenario.replace("-", "_") + ".py")
