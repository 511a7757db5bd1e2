"""`flashsale loadtest` as an operator runs it: every scenario, briefly, on a detached stack.

No speed is asserted anywhere: a shared 2-core machine decides how many buyers
a few seconds see. What must hold whatever the speed: the command exits 0
(every invariant held), bad input got 4xx, and the checks it relies on do
catch a broken rule when one is put in front of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.stackfile import StackFile
from loadtests.invariants import SaleExpectations, check_sale

FLASHSALE = [sys.executable, "-m", "infra.cli"]
LOADTEST = [
    sys.executable,
    "-c",
    "from infra.loadtest_command import loadtest; loadtest(prog_name='flashsale loadtest')",
]
USERS = "20"
DURATION_S = "5"


def run(
    command: list[str], state_dir: Path, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_STATE_DIR"] = str(state_dir)
    # The repository on the import path, also when the command runs elsewhere.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["FLASHSALE_POSTGRES_FSYNC"] = "false"
    env["FLASHSALE_PARTITIONS"] = "4"
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=cwd
    )


@pytest.fixture(scope="module")
def stack_dir(state_root: Path) -> Iterator[Path]:
    state_dir = state_root / "loadtest-stack"
    started = run([*FLASHSALE, "up", "--detach", "--port", "0"], state_dir, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        yield state_dir
    finally:
        stopped = run([*FLASHSALE, "down"], state_dir)
        assert stopped.returncode == 0 or "no stack file" in stopped.stderr, stopped.stderr


def loadtest(state_dir: Path, scenario: str) -> dict[str, object]:
    result = run(
        [*LOADTEST, scenario, "--users", USERS, "--duration", DURATION_S, "--json"], state_dir
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    summary: dict[str, object] = json.loads(result.stdout)
    assert summary["ok"] is True and summary["violations"] == []
    return summary


def test_without_a_running_stack_it_is_a_usage_error(tmp_path: Path) -> None:
    result = run([*LOADTEST, "spike"], tmp_path)
    assert result.returncode == 2
    assert "flashsale up --detach" in result.stderr


def test_help_names_every_scenario_and_setting(tmp_path: Path) -> None:
    result = run([*LOADTEST, "--help"], tmp_path)
    assert result.returncode == 0
    for word in ("spike", "retry-storm", "multi-item", "abusive", "FLASHSALE_LOADTEST_USERS"):
        assert word in result.stdout


def test_a_relative_state_folder_works_as_a_new_user_has_it(stack_dir: Path) -> None:
    """`.flashsale` relative to where the user stands (Locust runs in the run's own
    folder: it was handed paths relative to the old one and wrote nothing found)."""
    relative = Path(stack_dir.name)
    result = run(
        [*LOADTEST, "spike", "--users", USERS, "--duration", "3", "--json"],
        relative,
        cwd=stack_dir.parent,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert json.loads(result.stdout)["ok"] is True
    assert list((stack_dir / "loadtests").glob("*-spike-*/locust.json"))


@pytest.mark.parametrize("scenario", ["spike", "retry-storm", "multi-item", "abusive"])
def test_scenario_keeps_every_invariant(stack_dir: Path, scenario: str) -> None:
    summary = loadtest(stack_dir, scenario)
    answers = summary["answers"]
    assert isinstance(answers, dict) and answers
    assert isinstance(summary["requests"], int) and summary["requests"] > 0
    assert isinstance(summary["confirmed_units"], int) and isinstance(summary["stock"], int)
    assert summary["confirmed_units"] <= summary["stock"]
    if scenario == "abusive":
        bad_input = {name: counts for name, counts in answers.items() if name.startswith("bad")}
        assert bad_input
        for counts in bad_input.values():
            assert all(label.startswith("4") or label in ("timeout", "error") for label in counts)


async def test_the_checks_catch_what_they_look_for(stack_dir: Path) -> None:
    """Fed a lost acceptance, a key answered with two ids and a missing item, the
    check reports each one: so a clean run's silence means something."""
    stack = StackFile.load(stack_dir)
    expected = SaleExpectations(
        stock={"lt-absent-item": 5},
        keys={("lt-absent-user", "key-1"): ("p_" + "a" * 32, "p_" + "b" * 32)},
    )
    report = await check_sale(stack.database_url, ["p_" + "c" * 32], expected, final_wait_s=0.5)
    text = "\n".join(report.violations)
    assert not report.ok
    assert "item missing" in text
    assert "LOST" in text
    assert "KEY" in text
