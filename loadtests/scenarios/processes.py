"""What a locustfile does when Locust runs as a master and forked workers (`--processes N`).

Locust's master builds its reports from the statistics its workers send every
3 s, and after the run time it waits only 0.5 s for their last ones: the
requests a worker finishes while it stops (up to `--stop-timeout`) never reach
those reports. The master then gives its workers 3 s to exit before it
interrupts them, maybe before they wrote anything. So each worker keeps its own
statistics and writes them with its results at test_stop, and the master waits
(bounded) for every worker's files before it exits.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import RequestStats

# How long the master waits for its workers' files beyond their stop timeout.
WORKER_FILES_GRACE_S = 10.0
POLL_S = 0.2


def worker_index(environment: Environment) -> int | None:
    """This process's index among the workers (0, 1, ...), None when it is no worker."""
    runner = environment.runner
    return runner.worker_index if isinstance(runner, WorkerRunner) else None


def is_master(environment: Environment) -> bool:
    return isinstance(environment.runner, MasterRunner)


class WorkerStats:
    """Every request of this worker, kept as Locust keeps them, never reset (the
    runner's own statistics are emptied each time they are sent to the master)."""

    def __init__(self, environment: Environment) -> None:
        # The cache serves only Locust's live "current" percentiles.
        self.stats = RequestStats(use_response_times_cache=False)
        environment.events.request.add_listener(self.on_request)  # type: ignore[no-untyped-call]

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: int,
        response_length: int,
        exception: Exception | None = None,
        **_: Any,
    ) -> None:
        self.stats.log_request(request_type, name, response_time, response_length)
        if exception:
            self.stats.log_error(request_type, name, exception)

    def save(self, path: Path) -> None:
        """In the format of Locust's `--json-file` report."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats.serialize_stats()))
        os.replace(tmp, path)  # the master and the runner never read half a file


def wait_for_worker_files(
    environment: Environment, files_of: Callable[[int], Sequence[Path]]
) -> None:
    """Keep the master from exiting (and interrupting its workers) until every
    worker that joined has written its files, or their stop timeout has passed."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return
    wanted = [path for index in sorted(runner.worker_indexes.values()) for path in files_of(index)]
    deadline = time.monotonic() + (environment.stop_timeout or 0) + WORKER_FILES_GRACE_S
    while not all(path.exists() for path in wanted) and time.monotonic() < deadline:
        gevent.sleep(POLL_S)
