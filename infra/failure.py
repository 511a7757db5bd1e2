"""How a command reports an error: its message, then each cause it was raised from."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def print_failure(console: Console, headline: str, exc: BaseException) -> None:
    """`headline` is console markup; the messages are printed as they are."""
    console.print(f"{headline} {escape(str(exc))}")
    cause = exc.__cause__
    while cause is not None:
        console.print(f"  [red]caused by:[/red] {type(cause).__name__}: {escape(str(cause))}")
        cause = cause.__cause__
