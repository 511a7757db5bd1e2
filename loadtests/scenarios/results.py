"""The results file a locustfile writes at test_stop and the runner reads afterwards.

Locust's own JSON holds timings; this file holds what Locust cannot know: the
purchase ids answered 202 (for the lost-acceptance check), every purchase id
each idempotency key was answered with (for the retry-storm check) and the
answers counted by status, with those that break a scenario's rule apart.

With several Locust processes each worker writes its own file (`worker_path`)
and the runner merges them (`ScenarioResults.merge`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_EXAMPLES = 20
# The answer label of a request that got no HTTP answer: the load generator's side.
TIMEOUT = "timeout"
ERROR = "error"
NO_ANSWER = frozenset({TIMEOUT, ERROR})


def worker_path(path: Path, worker: int) -> Path:
    """Where worker `worker` of a multi-process run writes what would go to `path`:
    results.json -> results.w0.json."""
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


@dataclass(frozen=True, slots=True)
class KeyAnswers:
    user_id: str
    key: str
    # Distinct purchase ids the gateway answered for this (user, key): one, or a bug.
    purchase_ids: tuple[str, ...]


@dataclass
class ScenarioResults:
    # request name -> answer ("202", "409", "timeout", "error", ...) -> count
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    keys: list[KeyAnswers] = field(default_factory=list)
    # final statuses ("confirmed", "rejected", "pending") polled by the buyers
    finals: dict[str, int] = field(default_factory=dict)
    # "request name -> answer" pairs a scenario forbids (a 5xx to bad input, a 200
    # for someone else's purchase...), counted; a few described in `examples`
    broken_rules: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    buyers: int = 0

    def save(self, path: Path) -> None:
        data = {
            "answers": self.answers,
            "accepted": self.accepted,
            "keys": [[k.user_id, k.key, list(k.purchase_ids)] for k in self.keys],
            "finals": self.finals,
            "broken_rules": self.broken_rules,
            "examples": self.examples[:MAX_EXAMPLES],
            "buyers": self.buyers,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # the runner never reads half a file

    @classmethod
    def load(cls, path: Path) -> ScenarioResults:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(
            answers={name: dict(counts) for name, counts in data["answers"].items()},
            accepted=list(data["accepted"]),
            keys=[KeyAnswers(user, key, tuple(ids)) for user, key, ids in data["keys"]],
            finals=dict(data["finals"]),
            broken_rules=dict(data["broken_rules"]),
            examples=list(data["examples"]),
            buyers=int(data["buyers"]),
        )

    @classmethod
    def merge(cls, parts: Iterable[ScenarioResults]) -> ScenarioResults:
        """One run's results from its workers' files: counts add up, ids and keys join.

        A buyer (user id, key) lives in one worker, but a key seen by two would
        still be judged on every id it was answered with."""
        merged = cls()
        answers: dict[str, Counter[str]] = {}
        accepted: dict[str, None] = {}  # insertion-ordered set
        keys: dict[tuple[str, str], set[str]] = {}
        finals: Counter[str] = Counter()
        broken: Counter[str] = Counter()
        for part in parts:
            for name, counts in part.answers.items():
                answers.setdefault(name, Counter()).update(counts)
            accepted.update(dict.fromkeys(part.accepted))
            for answer in part.keys:
                keys.setdefault((answer.user_id, answer.key), set()).update(answer.purchase_ids)
            finals.update(part.finals)
            broken.update(part.broken_rules)
            merged.examples.extend(part.examples[: MAX_EXAMPLES - len(merged.examples)])
            merged.buyers += part.buyers
        merged.answers = {name: dict(counts) for name, counts in answers.items()}
        merged.accepted = list(accepted)
        merged.keys = [KeyAnswers(u, k, tuple(sorted(ids))) for (u, k), ids in keys.items()]
        merged.finals = dict(finals)
        merged.broken_rules = dict(broken)
        return merged
