"""`flashsale up`: start the embedded stack, then hold it until Ctrl-C or SIGTERM
(or, with --detach, leave it running for `flashsale down`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from infra.lifecycle import stack_lifecycle, wait_for_interrupt
from infra.stack import EmbeddedStack, stack_is_running
from infra.stackfile import StackFile, stack_lock
from services.errors import StackNotRunningError, StackRunningError
from services.settings import Settings

EXIT_INTERRUPTED = 130


def run_up(
    settings: Settings,
    consumers: int,
    gateways: int,
    detach: bool,
    say: Callable[[str], None],
    err: Console,
    out: Console,
) -> None:
    """Interrupted while starting: what was started is stopped, then exit 130."""
    state_dir = settings.state_dir

    def stop(ended: BaseException | None) -> None:
        if ended is not None:
            err.print("[yellow]start failed or interrupted; stopping what was started[/yellow]")
        stack.stop(say)
        StackFile.remove(state_dir)

    try:
        with contextlib.ExitStack() as locked:
            # Held until stack.json is written: a `down` or `scale` meanwhile waits for it.
            locked.enter_context(stack_lock(state_dir))
            _refuse_second_stack(state_dir)
            stack = EmbeddedStack(state_dir, settings, redis_cluster=settings.redis_cluster)
            with stack_lifecycle(stop) as lifecycle:
                stack.start_services(say)
                stack.start_processes(consumers, say, gateways=gateways)
                stack_file = stack.stack_file()
                if not detach:
                    stack_file.record_supervisor(os.getpid())
                path = stack_file.save(state_dir)
                locked.close()
                _print_ready(out, stack_file, path)
                if detach:
                    lifecycle.detach()
                    return
                err.print("[bold]running; Ctrl-C stops everything[/bold]")
                wait_for_interrupt()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    err.print("[green]stopped[/green]")


def _refuse_second_stack(state_dir: Path) -> None:
    try:
        existing = StackFile.load(state_dir)
    except StackNotRunningError:
        return
    if stack_is_running(existing):
        raise StackRunningError(
            f"a stack is already running from {state_dir} (gateway {existing.gateway_url}); "
            "run `flashsale down` first"
        )
    StackFile.remove(state_dir)


def _print_ready(out: Console, stack_file: StackFile, path: Path) -> None:
    out.print(f"[green]ready[/green]  gateway {stack_file.gateway_url}")
    out.print(f"admin token: {stack_file.admin_token}")
    out.print(f"stack file:  {path}")
