"""One lifecycle for the commands that start a stack and must stop it (up, demo, chaos, bench).

The signal policy, the same for all: SIGTERM is Ctrl-C, so a `kill` runs the
cleanup a Ctrl-C runs; while the cleanup runs, SIGINT and SIGTERM are ignored,
so a second Ctrl-C cannot cut it short and leave child processes running.
Ctrl-C stays Python's own handler: inside `asyncio.run` the runner then cancels
its main task (finally blocks and context managers run) instead of raising in
the middle of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

# What the cleanup is told: None after a normal end, else what ended the body.
Stop = Callable[[BaseException | None], None]


class StackLifecycle:
    """Yielded by `stack_lifecycle`; `detach()` leaves the stack running at a normal end."""

    def __init__(self) -> None:
        self.detached = False

    def detach(self) -> None:
        self.detached = True


@contextlib.contextmanager
def stack_lifecycle(stop: Stop) -> Iterator[StackLifecycle]:
    """Runs the body with SIGTERM as Ctrl-C, then `stop` with both signals ignored.

    `stop` runs whatever ended the body (an error, Ctrl-C, SIGTERM, a normal end),
    except a normal end after `detach()`; the body's exception then propagates
    unchanged, a bug with its traceback.
    """
    lifecycle = StackLifecycle()
    ended: BaseException | None = None
    try:
        with sigterm_as_interrupt():
            yield lifecycle
    except (Exception, KeyboardInterrupt, SystemExit, asyncio.CancelledError) as exc:  # re-raised
        ended = exc
        raise
    finally:
        if ended is not None or not lifecycle.detached:
            with signals_ignored():
                stop(ended)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM both take the Ctrl-C path (KeyboardInterrupt, or the event
    loop cancelling the run). SIGINT is set explicitly: a shell starts background
    jobs with it ignored."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """For the cleanup: a second Ctrl-C must not cut it short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_interrupt() -> None:
    """Until Ctrl-C or SIGTERM: how a stack run in the foreground ends."""
    with sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
        while True:
            signal.pause()
