"""`flashsale bench --json` as a user runs it, on a small load.

No speed is asserted: a shared 2-core machine decides the figures. What must
hold whatever the speed: stdout is one JSON object with every key of api.md,
flashsale sold exactly its stock and never more, and a stalled consumer could
not oversell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

BENCH = [
    sys.executable,
    "-c",
    "from infra.bench_command import bench; bench(prog_name='flashsale bench')",
]
REQUESTS = 1000
STOCK = 50

SALE_KEYS = {"answered_per_s", "p50_ms", "p99_ms", "sellout_s", "confirmed", "oversold"}
API_KEYS: dict[str, set[str]] = {
    "lock_under_pause": {"redis_lock_oversold", "flashsale_oversold"},
    "open_stock": {"admitted_per_s", "p99_ms"},
    "apply": {"batched_per_s", "one_by_one_per_s"},
    "ratios": {
        "vs_redis_lock",
        "vs_postgres_row",
        "of_bare_http",
        "open_stock_of_bare_http",
        "apply_batching",
    },
}


def run_bench(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_PARTITIONS"] = "4"
    return subprocess.run(
        [*BENCH, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    # The locks phase has a test of its own (test_bench_locks.py).
    result = run_bench(
        "--json",
        "--requests",
        str(REQUESTS),
        "--stock",
        str(STOCK),
        "--phases",
        "spike,open_stock,apply",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout)  # stdout holds nothing else
    return parsed


def test_help_names_every_option_and_its_variable() -> None:
    result = run_bench("--help", timeout=30)
    assert result.returncode == 0
    for option in ("--json", "--requests", "--stock", "--concurrency", "--clients"):
        assert option in result.stdout
    assert "FLASHSALE_BENCH_REQUESTS" in result.stdout
    assert "--phases" in result.stdout
    assert "locks" in result.stdout


@pytest.mark.timeout(240)
def test_json_has_every_key_of_the_api(report: dict[str, Any]) -> None:
    assert isinstance(report["machine"], str) and report["machine"]
    assert (report["requests"], report["stock"]) == (REQUESTS, STOCK)
    systems = report["systems"]
    for name in ("flashsale", "redis_lock", "postgres_row"):
        assert set(systems[name]) >= SALE_KEYS, name
    assert set(systems["bare_http"]) >= {"answered_per_s", "p50_ms", "p99_ms"}
    for section, keys in API_KEYS.items():
        assert set(report[section]) >= keys, section
    for name, figures in systems.items():
        assert figures["answered_per_s"] > 0, name


@pytest.mark.timeout(240)
def test_flashsale_sells_its_stock_exactly(report: dict[str, Any]) -> None:
    flashsale = report["systems"]["flashsale"]
    assert flashsale["oversold"] == 0
    assert flashsale["confirmed"] == STOCK
    assert report["systems"]["postgres_row"]["oversold"] == 0
    assert report["open_stock"]["oversold"] == 0


@pytest.mark.timeout(240)
def test_a_stalled_consumer_cannot_oversell(report: dict[str, Any]) -> None:
    pause = report["lock_under_pause"]
    assert pause["flashsale_oversold"] == 0
    assert pause["flashsale_confirmed"] <= pause["stock"]
    assert isinstance(pause["redis_lock_oversold"], int)


@pytest.mark.timeout(240)
def test_cpu_per_purchase_is_split_by_part_and_adds_up(report: dict[str, Any]) -> None:
    by_part = report["cpu_us_per_purchase_by_part"]
    assert set(by_part["flashsale"]) == {"gateway", "consumers", "redis", "broker", "postgres"}
    assert set(by_part["postgres_row"]) == {"server", "postgres"}
    assert set(by_part["redis_lock"]) == {"server", "redis", "postgres"}
    for system, parts in by_part.items():
        total = report["cpu_us_per_purchase"][system]
        assert total is not None and total > 0, system
        # Each part is rounded to 0.1 us on its own.
        assert sum(parts.values()) == pytest.approx(total, abs=0.1 * len(parts)), system


@pytest.mark.timeout(240)
def test_the_spike_says_what_an_answer_costs_each_system(report: dict[str, Any]) -> None:
    systems = report["systems"]
    for name in ("flashsale", "postgres_row", "redis_lock", "redis_lock_queued", "bare_http"):
        figures = systems[name]
        assert figures["cpu_us_per_answer"] > 0, name
        parts = figures["cpu_us_per_answer_by_part"]
        assert sum(parts.values()) == pytest.approx(
            figures["cpu_us_per_answer"], abs=0.1 * len(parts)
        ), name
    assert set(systems["bare_http"]["cpu_us_per_answer_by_part"]) == {"server"}
