"""The Locust child process of `flashsale loadtest` and the files it hands back.

Locust runs as a child process: it monkey-patches the interpreter with gevent,
which must not meet flashsale's asyncio code. With `processes` > 1 it forks
that many workers under a master of its own (Locust's `--processes`); each
worker writes its own statistics and results, merged here (the master's own
report misses what the workers finish while they stop: see
`loadtests.scenarios.processes`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loadtests.loadtest.locust_stats import EndpointStats, combine, load_stats, save_stats
from loadtests.scenarios import locustfile_path
from loadtests.scenarios.params import ScenarioParams
from loadtests.scenarios.results import ScenarioResults, worker_path
from services.errors import FlashsaleError

# After the run time, users get this long to finish the request they are in.
STOP_TIMEOUT_S = 5
# Locust's start (imports, spawning every user) and its reports, on top of the run time.
START_ALLOWANCE_S = 30.0
TERMINATE_GRACE_S = 10.0
POLL_S = 0.25
LOG_TAIL_CHARS = 3000


class LoadtestError(FlashsaleError):
    """The load test could not run: the gateway refused the items, or Locust failed."""


class Progress(Protocol):
    def phase(self, text: str) -> None: ...

    def load(self, elapsed_s: float, duration_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RunFiles:
    folder: Path
    # Locust processes generating load: 1 is Locust alone, N a master and N workers.
    processes: int = 1

    @property
    def stats_base(self) -> Path:
        return self.folder / "locust"  # Locust appends ".json" and "_stats.csv"...

    @property
    def stats_json(self) -> Path:
        return self.folder / "locust.json"

    @property
    def results(self) -> Path:
        return self.folder / "results.json"

    @property
    def log(self) -> Path:
        return self.folder / "locust.log"

    def worker_files(self) -> list[tuple[Path, Path]]:
        """Each worker's (statistics, results), when there are several processes."""
        if self.processes == 1:
            return []
        return [
            (worker_path(self.stats_json, index), worker_path(self.results, index))
            for index in range(self.processes)
        ]


def locust_command(
    params: ScenarioParams, scenario: str, users: int, duration_s: int, files: RunFiles
) -> list[str]:
    return [*_locust_base(params, scenario, users, duration_s), *_reports(files)]


def _reports(files: RunFiles) -> list[str]:
    if files.processes == 1:
        return ["--json-file", str(files.stats_base), "--csv", str(files.stats_base)]
    # No --json-file: every worker would write its own emptied statistics over the
    # master's at exit. No --csv: the master's figures miss the workers' last requests.
    return ["--processes", str(files.processes)]


def _locust_base(params: ScenarioParams, scenario: str, users: int, duration_s: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile_path(scenario)),
        "--headless",
        "--host",
        params.gateway_url,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),  # every user within the first second: a spike, not a ramp
        "--run-time",
        f"{duration_s}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]


def locust_env(params: ScenarioParams) -> dict[str, str]:
    # Locust reads LOCUST_* variables as options: the scenario decides them, not the shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env.update(params.to_env())
    return env


def run_locust(
    scenario: str,
    params: ScenarioParams,
    users: int,
    duration_s: int,
    files: RunFiles,
    progress: Progress,
) -> None:
    command = locust_command(params, scenario, users, duration_s, files)
    deadline_s = START_ALLOWANCE_S + duration_s + STOP_TIMEOUT_S
    processes = "" if files.processes == 1 else f" in {files.processes} processes"
    progress.phase(f"{scenario}: {users} Locust users{processes} for {duration_s} s")
    with files.log.open("w") as log:
        child = subprocess.Popen(
            command,
            cwd=files.folder,  # so that no locust.conf or pyproject.toml of the caller applies
            env=locust_env(params),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of ours is handled by us, once
        )
        try:
            _watch(child, duration_s, deadline_s, progress)
        finally:
            _stop(child)
    if child.returncode not in (0, 1):  # 1: Locust saw failures, which we judge ourselves
        raise LoadtestError(
            f"locust exited with {child.returncode}; its log ({files.log}):\n{_tail(files.log)}"
        )


def _watch(
    child: subprocess.Popen[bytes], duration_s: int, deadline_s: float, progress: Progress
) -> None:
    started = time.monotonic()
    while child.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            raise LoadtestError(f"locust still running after {deadline_s:.0f} s; stopped it")
        progress.load(min(elapsed, float(duration_s)), float(duration_s))
        time.sleep(POLL_S)
    progress.load(float(duration_s), float(duration_s))


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets Locust stop its users and write its reports; SIGKILL if it hangs,
    to its whole process group: the workers it forked too."""
    if child.poll() is not None:
        return  # a master that exits has waited for its workers
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        # Locust is not yet reaped, so its group (start_new_session) is still ours.
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return "(no log)"


def read_outputs(files: RunFiles) -> tuple[list[EndpointStats], ScenarioResults]:
    if files.processes > 1:
        _merge_workers(files)
    missing = [p for p in (files.stats_json, files.results) if not p.exists()]
    if missing:
        raise LoadtestError(
            f"locust wrote no {', '.join(p.name for p in missing)}; its log:\n{_tail(files.log)}"
        )
    endpoints, results = load_stats(files.stats_json), ScenarioResults.load(files.results)
    if not any(entry.requests for entry in endpoints):
        raise LoadtestError(f"locust sent no request; its log ({files.log}):\n{_tail(files.log)}")
    return endpoints, results


def _merge_workers(files: RunFiles) -> None:
    """The workers' files as one locust.json and one results.json, as one process writes."""
    pairs = files.worker_files()
    missing = [path.name for pair in pairs for path in pair if not path.exists()]
    if missing:
        raise LoadtestError(
            f"{len(missing)} Locust worker files are missing ({', '.join(missing)}): a worker "
            f"died or was stopped before it wrote them; the log:\n{_tail(files.log)}"
        )
    save_stats(files.stats_json, combine(load_stats(stats) for stats, _ in pairs))
    ScenarioResults.merge(ScenarioResults.load(results) for _, results in pairs).save(files.results)
