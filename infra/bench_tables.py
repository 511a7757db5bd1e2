"""`flashsale bench`'s report as tables for the terminal (without --json)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from infra.bench_locks_table import locks_table

SYSTEMS = ("flashsale", "redis_lock", "redis_lock_queued", "postgres_row", "bare_http")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        decimals = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
        return f"{value:,.{decimals}f}"
    return str(value)


def report_tables(report: dict[str, Any]) -> list[Table]:
    """The tables `flashsale bench` prints without --json, for the phases that ran."""
    tables = []
    if "systems" in report:
        tables.append(_systems_table(report))
    if {"open_stock", "apply", "lock_under_pause", "ratios"} <= report.keys():
        tables.append(_phases_table(report))
    if "locks" in report:
        tables.append(locks_table(report["locks"], report["machine"]))
    return tables


def _systems_table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"{report['requests']:,} buyers, {report['stock']} units, same load for each"
        f" (Postgres durability: {report.get('durability', '?')})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("system", no_wrap=True)
    for column in ("answered/s", "p50 ms", "p99 ms", "sellout s", "sold", "oversold"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for name in SYSTEMS:
        figures = report["systems"][name]
        table.add_row(
            name,
            *(
                _cell(figures.get(key))
                for key in (
                    "answered_per_s",
                    "p50_ms",
                    "p99_ms",
                    "sellout_s",
                    "confirmed",
                    "oversold",
                )
            ),
        )
    return table


def _phases_table(report: dict[str, Any]) -> Table:
    table = Table(
        title="other phases and ratios",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption=report["machine"],
    )
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right")
    open_stock, apply, pause = report["open_stock"], report["apply"], report["lock_under_pause"]
    rows = [
        ("open_stock admitted/s", open_stock["admitted_per_s"]),
        ("open_stock p99 ms", open_stock["p99_ms"]),
        ("open_stock postgres_row sold/s", open_stock["postgres_row_sold_per_s"]),
        ("apply batched records/s", apply["batched_per_s"]),
        ("apply one-by-one records/s", apply["one_by_one_per_s"]),
        ("apply batched, one partition alone", apply.get("one_partition_per_s")),
        ("lock_under_pause redis_lock oversold", pause["redis_lock_oversold"]),
        ("lock_under_pause flashsale oversold", pause["flashsale_oversold"]),
        *_cpu_rows(report),
        *((f"ratio {name}", ratio) for name, ratio in report["ratios"].items()),
    ]
    for label, value in rows:
        table.add_row(label, _cell(value))
    return table


def _cpu_rows(report: dict[str, Any]) -> list[tuple[str, object]]:
    """CPU microseconds per sold unit, open stock: each system, then its parts."""
    by_part = report.get("cpu_us_per_purchase_by_part", {})
    rows: list[tuple[str, object]] = []
    for system, total in report.get("cpu_us_per_purchase", {}).items():
        parts = ", ".join(f"{part} {us}" for part, us in by_part.get(system, {}).items())
        rows.append((f"cpu us/purchase {system}", f"{total} ({parts})" if parts else total))
    return rows
