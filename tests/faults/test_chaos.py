"""A short `flashsale chaos` run, as an operator would start it: the workload, the
nemesis and the checker end to end, with 0 violations expected."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.faults import FAULTS, NETWORK_FAULTS
from infra.nemesis import schedule

# Seed 9 over 30 s schedules: a broker restart, a consumer cut off from Postgres
# (a network partition, where the machine allows one), a Postgres restart, a
# consumer SIGSTOPped past its session timeout, a consumer added (printed by the
# run itself).
SEED = "9"
WITH_NETWORK = (
    "restart_broker",
    "partition_consumer_postgres",
    "restart_postgres",
    "pause_consumer",
    "add_consumer",
)
# Without root there is no network lab: the run leaves those faults out, and the
# seed's schedule is then drawn from the other kinds.
SCHEDULED = (
    WITH_NETWORK
    if os.geteuid() == 0
    else tuple(
        event.fault
        for event in schedule(int(SEED), 30.0, [f for f in FAULTS if f not in NETWORK_FAULTS])
    )
)
CHECKED = re.compile(
    r"checked: (\d+) operations, (\d+) accepted purchases, (\d+) items,"
    r" (\d+) faults, (\d+) violations"
)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Postgres runs as its own user: the folder must be open to it (state_dir is not)."""
    folder = Path(tempfile.mkdtemp(prefix="flashsale-chaos-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(200)
def test_short_chaos_run_keeps_every_invariant(state_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    # Fewer items than the default keeps the run short; the schedule is the seed's.
    command = ["chaos", "--duration", "30", "--seed", SEED, "--items", "300"]
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", *command, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=190,
        env=env,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # The schedule is printed first, so a failure can be replayed.
    assert all(fault in result.stdout for fault in SCHEDULED), result.stdout[:2000]
    found = CHECKED.search(re.sub(r"\s+", " ", result.stdout))
    assert found is not None, result.stdout[-3000:]
    operations, accepted, items, faults, violations = map(int, found.groups())
    # Not vacuous: real traffic, real faults, and the checker looked at them.
    assert operations > 500 and accepted > 100 and items == 300
    assert faults == len(SCHEDULED)
    assert violations == 0
    assert list(state_dir.glob("chaos/*/history.jsonl"))
