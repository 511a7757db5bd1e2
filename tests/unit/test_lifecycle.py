"""The one stack lifecycle: when the cleanup runs, and the signal policy around it."""

from __future__ import annotations

import io
import os
import signal

import pytest
from rich.console import Console

from infra.failure import print_failure
from infra.lifecycle import stack_lifecycle


def test_cleanup_runs_after_a_normal_end_and_is_told_so() -> None:
    told: list[BaseException | None] = []
    with stack_lifecycle(told.append):
        pass
    assert told == [None]


def test_detach_leaves_the_stack_running_after_a_normal_end() -> None:
    told: list[BaseException | None] = []
    with stack_lifecycle(told.append) as lifecycle:
        lifecycle.detach()
    assert told == []


def test_a_bug_is_cleaned_up_after_and_propagates_as_itself() -> None:
    told: list[BaseException | None] = []
    with pytest.raises(ZeroDivisionError), stack_lifecycle(told.append) as lifecycle:
        lifecycle.detach()  # an error after detach still stops what was started
        _ = 1 / 0
    assert len(told) == 1 and isinstance(told[0], ZeroDivisionError)


def test_sigterm_is_ctrl_c_and_a_second_signal_cannot_cut_the_cleanup_short() -> None:
    cleanup_finished: list[bool] = []

    def stop(ended: BaseException | None) -> None:
        assert isinstance(ended, KeyboardInterrupt)
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, during the cleanup
        os.kill(os.getpid(), signal.SIGTERM)
        cleanup_finished.append(True)

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt), stack_lifecycle(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # returns only if the signal was not turned into KeyboardInterrupt
    assert cleanup_finished == [True]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_the_failure_prints_every_cause_in_order() -> None:
    try:
        try:
            try:
                raise OSError("connection refused [port 5432]")
            except OSError as exc:
                raise TimeoutError("no answer") from exc
        except TimeoutError as exc:
            raise RuntimeError("could not start") from exc
    except RuntimeError as exc:
        failure = exc
    buffer = io.StringIO()
    print_failure(Console(file=buffer, width=200), "[bold red]error:[/bold red]", failure)
    assert buffer.getvalue().splitlines() == [
        "error: could not start",
        "  caused by: TimeoutError: no answer",
        "  caused by: OSError: connection refused [port 5432]",
    ]
