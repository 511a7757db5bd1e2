"""The benchmark's one error type (the CLI prints it with its causes and exits 1)."""

from __future__ import annotations

from services.errors import FlashsaleError


class BenchError(FlashsaleError):
    """The benchmark could not run: a process did not start, a phase did not finish."""
