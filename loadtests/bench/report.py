"""The result of a bench run, and the JSON object of api.md (`flashsale bench --json`)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests.bench.apply import ApplyFigures
from loadtests.bench.cpu import per_unit_us
from loadtests.bench.loadgen import LoadResult
from loadtests.bench.locks.figures import DesignFigures
from loadtests.bench.locks.report import locks_json
from loadtests.bench.pause import PAUSE_LOCK_TTL_MS, PAUSE_MS, ZombieFigures
from loadtests.bench.rebalance import RebalanceFigures
from loadtests.bench.runs import ADMITTED, SystemRun

# The order of api.md: flashsale first, the ceiling last.
SYSTEM_ORDER = ("flashsale", "redis_lock", "redis_lock_queued", "postgres_row", "bare_http")


@dataclass(frozen=True, slots=True)
class BenchResults:
    requests: int
    stock: int
    concurrency: int
    clients: int
    # Each phase's figures; a phase left out of --phases leaves its own empty.
    systems: dict[str, SystemRun] = field(default_factory=dict)
    open_stock: SystemRun | None = None
    open_stock_row: SystemRun | None = None  # postgres_row with stock for everyone
    open_stock_lock: SystemRun | None = None  # redis_lock with stock for everyone
    rebalance: RebalanceFigures | None = None
    lock_paused: SystemRun | None = None
    flashsale_paused: ZombieFigures | None = None
    apply: ApplyFigures | None = None
    locks: dict[str, DesignFigures] | None = None


def report_json(results: BenchResults, machine: str) -> dict[str, Any]:
    """The keys of the phases that ran (all of them by default)."""
    report: dict[str, Any] = {
        "machine": machine,
        "requests": results.requests,
        "stock": results.stock,
        "concurrency": results.concurrency,
        "client_processes": results.clients,
    }
    if results.systems:
        report["systems"] = {
            name: _system_json(results.systems[name])
            for name in SYSTEM_ORDER
            if name in results.systems
        }
    if results.lock_paused is not None and results.flashsale_paused is not None:
        report["lock_under_pause"] = _pause_json(results.lock_paused, results.flashsale_paused)
    if results.open_stock is not None and results.open_stock_row is not None:
        report["open_stock"] = _open_stock_json(results.open_stock, results.open_stock_row)
    if results.open_stock is not None:
        report["cpu_us_per_purchase"] = _cpu_json(results)
        report["cpu_us_per_purchase_by_part"] = _cpu_parts_json(results)
    if results.apply is not None:
        report["apply"] = _apply_json(results.apply)
    if results.rebalance is not None:
        report["rebalance"] = asdict(results.rebalance)
    if results.locks is not None:
        report["locks"] = locks_json(results.locks)
    if {"systems", "open_stock", "apply"} <= report.keys():
        report["ratios"] = _ratios(report["systems"], report["open_stock"], report["apply"])
    return report


def _system_json(run: SystemRun) -> dict[str, Any]:
    load = run.load
    figures: dict[str, Any] = {
        "answered_per_s": round(load.answered_per_s, 1),
        "p50_ms": round(load.percentile_ms(0.5), 2),
        "p99_ms": round(load.percentile_ms(0.99), 2),
    }
    if run.tally is not None:
        sellout = run.sellout_s
        figures["sellout_s"] = None if sellout is None else round(sellout, 3)
        figures["confirmed"] = run.tally.confirmed
        figures["oversold"] = run.tally.oversold
    figures["answered"] = load.answered
    figures["elapsed_s"] = round(load.elapsed_s, 3)
    if run.cpu_s is not None and run.cpu_parts_s is not None and load.answered:
        # Mostly sold-out answers: what one costs, and in which process.
        figures["cpu_us_per_answer"] = per_unit_us(run.cpu_s, load.answered)
        figures["cpu_us_per_answer_by_part"] = {
            part: per_unit_us(cpu_s, load.answered) for part, cpu_s in run.cpu_parts_s.items()
        }
    figures["statuses"] = _statuses(load)
    return figures


def _statuses(load: LoadResult) -> dict[str, int]:
    return {str(status or "no_answer"): n for status, n in sorted(load.statuses.items())}


def _open_stock_json(run: SystemRun, row: SystemRun) -> dict[str, Any]:
    load = run.load
    admitted = load.count(ADMITTED)
    row_sold = 0 if row.tally is None else row.tally.confirmed
    figures: dict[str, Any] = {
        "admitted_per_s": round(admitted / max(load.elapsed_s, 1e-9), 1),
        "p99_ms": round(load.percentile_ms(0.99), 2),
        "p50_ms": round(load.percentile_ms(0.5), 2),
        "admitted": admitted,
        "statuses": _statuses(load),
        # The same load on postgres_row: every request an UPDATE that sells.
        "postgres_row_sold_per_s": round(row_sold / max(row.load.elapsed_s, 1e-9), 1),
        "postgres_row_p99_ms": round(row.load.percentile_ms(0.99), 2),
    }
    tally = run.tally
    if tally is not None:
        figures["confirmed"] = tally.confirmed
        figures["oversold"] = tally.oversold
        if tally.last_sale_at is not None:
            # Admission to the last commit in Postgres: the consumers' end-to-end pace.
            span_s = tally.last_sale_at - load.started_at
            figures["confirmed_per_s"] = round(tally.confirmed / max(span_s, 1e-9), 1)
    return figures


def _cpu_runs(results: BenchResults) -> dict[str, SystemRun | None]:
    return {
        "flashsale": results.open_stock,
        "postgres_row": results.open_stock_row,
        "redis_lock": results.open_stock_lock,
    }


def _cpu_parts_json(results: BenchResults) -> dict[str, dict[str, float | None]]:
    """The same per part of each system: where the microseconds go."""
    figures: dict[str, dict[str, float | None]] = {}
    for name, run in _cpu_runs(results).items():
        if run is not None and run.cpu_parts_s is not None and run.tally is not None:
            confirmed = run.tally.confirmed
            figures[name] = {
                part: per_unit_us(cpu_s, confirmed) for part, cpu_s in run.cpu_parts_s.items()
            }
    return figures


def _cpu_json(results: BenchResults) -> dict[str, float | None]:
    """CPU microseconds of all of a system's processes per unit it sold, open stock."""
    figures: dict[str, float | None] = {}
    for name, run in _cpu_runs(results).items():
        if run is None or run.cpu_s is None or run.tally is None:
            figures[name] = None
        else:
            figures[name] = per_unit_us(run.cpu_s, run.tally.confirmed)
    return figures


def _pause_json(lock: SystemRun, flashsale: ZombieFigures) -> dict[str, Any]:
    tally = lock.tally
    return {
        "redis_lock_oversold": 0 if tally is None else tally.oversold,
        "flashsale_oversold": flashsale.oversold,
        "stock": flashsale.stock,
        "lock_ttl_ms": PAUSE_LOCK_TTL_MS,
        "pause_ms": PAUSE_MS,
        "redis_lock_requests": lock.load.requests,
        "redis_lock_confirmed": None if tally is None else tally.confirmed,
        "flashsale_confirmed": flashsale.confirmed,
        "flashsale_batches_applied": flashsale.batches_applied,
        "flashsale_batches_fenced": flashsale.batches_fenced,
    }


def _apply_json(apply: ApplyFigures) -> dict[str, Any]:
    return {
        "batched_per_s": round(apply.batched_per_s, 1),
        "one_by_one_per_s": round(apply.one_by_one_per_s, 1),
        "batch_records": apply.batch_records,
        "batched_records": apply.batched_records,
        "one_by_one_records": apply.one_by_one_records,
        "partitions": apply.partitions,
        "one_partition_per_s": round(apply.one_partition_per_s, 1),
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def _ratios(
    systems: dict[str, dict[str, Any]], open_stock: dict[str, Any], apply: dict[str, Any]
) -> dict[str, float | None]:
    flashsale = float(systems["flashsale"]["answered_per_s"])
    bare = float(systems["bare_http"]["answered_per_s"])
    return {
        "vs_redis_lock": _ratio(flashsale, float(systems["redis_lock"]["answered_per_s"])),
        "vs_postgres_row": _ratio(flashsale, float(systems["postgres_row"]["answered_per_s"])),
        "vs_redis_lock_queued": _ratio(
            flashsale, float(systems["redis_lock_queued"]["answered_per_s"])
        ),
        "of_bare_http": _ratio(flashsale, bare),
        "open_stock_of_bare_http": _ratio(float(open_stock["admitted_per_s"]), bare),
        "open_stock_vs_postgres_row": _ratio(
            float(open_stock["admitted_per_s"]), float(open_stock["postgres_row_sold_per_s"])
        ),
        "apply_batching": _ratio(float(apply["batched_per_s"]), float(apply["one_by_one_per_s"])),
    }


def machine_description() -> str:
    """Host, CPU model, cores we may use, memory, OS and Python (reads /proc on Linux)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_gb()
    parts = [
        platform.node(),
        _cpu_model(),
        f"{cores} cores",
        "" if memory is None else f"{memory:.1f} GB RAM",
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}",
    ]
    return ", ".join(part for part in parts if part)


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1024 * 1024)
    return None
