"""A short `flashsale chaos` run, as an operator would start it."""

from __future__ import annotations

import os
import subprocess
import sys


def test_short_chaos_run_keeps_every_invariant() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "chaos", "--duration", "25", "--seed", "12"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "invariants hold" in result.stdout
    # The schedule is printed first, so a failure can be replayed.
    assert "restart_broker" in result.stdout and "restart_redis" in result.stdout
