"""The `locks` phase of `flashsale bench` as a table for the terminal."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

COLUMNS = (
    ("answered/s", "answered_per_s"),
    ("oversold (spike)", "oversold"),
    ("oversold under pause", "oversold_under_pause"),
    ("oversold under failover", "oversold_under_failover"),
)


def locks_table(locks: dict[str, Any], machine: str) -> Table:
    table = Table(
        title="lock designs: spike, a holder SIGSTOPped past its TTL, a Redis failover",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption=machine,
    )
    table.add_column("design", no_wrap=True)
    table.add_column("library", no_wrap=True)
    for title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for design, figures in locks.items():
        cells = [_cell(figures.get(key)) for _, key in COLUMNS]
        table.add_row(design, str(figures["library"]), *cells)
    return table


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}"
    return str(value)
