"""What every locustfile shares: the buyer base class, reading answers, the recorder.

Each Locust user runs buyer after buyer: every iteration of a task is a new
person (a fresh user id and token), so a few hundred Locust users stand for
tens of thousands of buyers. Answers are counted by status here, because
Locust's statistics only know "success" and "failure", and a 409 sold_out or a
429 rate_limited is a correct answer in a flash sale, not a failure.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from locust import FastHttpUser, constant, events
from locust.contrib.fasthttp import FastHttpSession, ResponseContextManager
from locust.env import Environment

from loadtests.scenarios.params import ScenarioParams
from loadtests.scenarios.processes import (
    WorkerStats,
    is_master,
    wait_for_worker_files,
    worker_index,
)
from loadtests.scenarios.results import (
    ERROR,
    MAX_EXAMPLES,
    NO_ANSWER,
    TIMEOUT,
    KeyAnswers,
    ScenarioResults,
    worker_path,
)
from services.tokens import issue_token

TOKEN_TTL_S = 3600
PURCHASES_PATH = "/v1/purchases"
BUY = "POST /v1/purchases"
POLL = "GET /v1/purchases/[id]?wait"
# Correct answers to a well-formed purchase during a sale: accepted, sold out (or a
# twin still in progress), rate limited, or "the queue cannot take it now".
BUY_ANSWERS = frozenset({"202", "409", "429", "503"})
POLL_ANSWERS = frozenset({"200"})


@dataclass(frozen=True, slots=True)
class Answer:
    label: str  # the HTTP status as text, or "timeout" / "error" when none came
    status: int  # 0 when no HTTP answer came
    body: dict[str, Any]

    @property
    def purchase_id(self) -> str | None:
        value = self.body.get("purchase_id")
        return value if self.status == 202 and isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Buyer:
    user_id: str
    token: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers


class Recorder:
    """Everything a run must hand to the invariant check; one per Locust process."""

    def __init__(self) -> None:
        self.answers: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.accepted: dict[str, None] = {}  # insertion-ordered set
        self.keys: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self.finals: Counter[str] = Counter()
        self.broken_rules: Counter[str] = Counter()
        self.examples: list[str] = []
        self.buyers = 0

    def answered(self, name: str, answer: Answer) -> None:
        self.answers[name][answer.label] += 1

    def accept(self, purchase_id: str) -> None:
        self.accepted[purchase_id] = None

    def key_answered(self, buyer: Buyer, key: str, purchase_id: str | None) -> None:
        ids = self.keys[(buyer.user_id, key)]
        if purchase_id is not None:
            ids.add(purchase_id)

    def broke_rule(self, name: str, answer: Answer, why: str) -> None:
        self.broken_rules[f"{name} -> {answer.label}"] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{name}: {why}; answered {answer.label} {answer.body}")

    def results(self) -> ScenarioResults:
        return ScenarioResults(
            answers={name: dict(counts) for name, counts in self.answers.items()},
            accepted=list(self.accepted),
            keys=[
                KeyAnswers(user, key, tuple(sorted(ids))) for (user, key), ids in self.keys.items()
            ],
            finals=dict(self.finals),
            broken_rules=dict(self.broken_rules),
            examples=list(self.examples),
            buyers=self.buyers,
        )


@dataclass(frozen=True, slots=True)
class Sale:
    params: ScenarioParams
    recorder: Recorder

    def new_buyer(self, role: str = "b") -> Buyer:
        user_id = self.params.user_prefix(role) + uuid.uuid4().hex[:16]
        self.recorder.buyers += 1
        return Buyer(user_id, issue_token(self.params.secret, user_id, TOKEN_TTL_S))


def new_key() -> str:
    return uuid.uuid4().hex


def _timed_out(error: object) -> bool:
    """geventhttpclient reports its network timeout as a TimeoutError, bare or wrapped
    (as `original`) in the RetriesExceeded it raises once it gives up."""
    return isinstance(error, TimeoutError) or isinstance(
        getattr(error, "original", None), TimeoutError
    )


def read_answer(response: ResponseContextManager) -> Answer:
    status = response.status_code
    if not status:
        return Answer(TIMEOUT if _timed_out(getattr(response, "error", None)) else ERROR, 0, {})
    try:
        body = json.loads(response.content or b"{}")
    except ValueError:
        body = {"unparsed": (response.content or b"")[:200].decode("latin-1")}
    return Answer(str(status), status, body if isinstance(body, dict) else {"body": body})


def send(
    session: FastHttpSession,
    method: str,
    path: str,
    name: str,
    allowed: Collection[str],
    **kwargs: Any,
) -> Answer:
    """One request, counted by answer; Locust marks it failed unless its answer is allowed."""
    with session.request(method, path, name=name, catch_response=True, **kwargs) as response:
        answer = read_answer(response)
        if answer.label in allowed:
            response.success()
        else:
            response.failure(f"answered {answer.label}")
    return answer


class BuyerUser(FastHttpUser):
    """Buys with well-formed requests and checks each answer is one a sale may give."""

    abstract = True
    wait_time = constant(0)
    sale: ClassVar[Sale]  # set by the init listener that `install` registers

    def buy(
        self,
        buyer: Buyer,
        item_id: str,
        quantity: int = 1,
        key: str | None = None,
        session: FastHttpSession | None = None,
        name: str = BUY,
    ) -> Answer:
        body = json.dumps({"item_id": item_id, "quantity": quantity})
        headers = {**buyer.headers(key or new_key()), "Content-Type": "application/json"}
        answer = send(
            session or self.client,
            "POST",
            PURCHASES_PATH,
            name,
            BUY_ANSWERS,  # a client timeout is a failure in Locust's table, not a broken rule
            data=body,
            headers=headers,
        )
        self.check_buy_answer(name, answer)
        return answer

    def check_buy_answer(self, name: str, answer: Answer) -> None:
        recorder = self.sale.recorder
        recorder.answered(name, answer)
        if answer.label not in BUY_ANSWERS | NO_ANSWER:
            recorder.broke_rule(
                name, answer, "a well-formed purchase got an answer a sale never gives"
            )
        elif answer.purchase_id is not None:
            recorder.accept(answer.purchase_id)

    def await_final(self, buyer: Buyer, purchase_id: str) -> Answer:
        """Long-poll the purchase until it is final (or the wait ends), as a buyer's page would."""
        path = f"{PURCHASES_PATH}/{purchase_id}?wait={self.sale.params.result_wait_s:g}"
        answer = send(self.client, "GET", path, POLL, POLL_ANSWERS, headers=buyer.headers())
        self.sale.recorder.answered(POLL, answer)
        if answer.status == 200:
            self.sale.recorder.finals[str(answer.body.get("status"))] += 1
        elif answer.label not in NO_ANSWER:
            self.sale.recorder.broke_rule(
                POLL, answer, "its owner could not read an accepted purchase"
            )
        return answer


def install(*user_classes: type[BuyerUser]) -> None:
    """Give the user classes their run when Locust starts; write the results when it stops.

    One Locust process writes `results.json` (and Locust its `locust.json`). With
    `--processes N`, each worker writes `results.w<i>.json` and `locust.w<i>.json`
    and the master, which has no users, writes none (see `processes`)."""
    worker_stats: list[WorkerStats] = []  # this process's, when it is a worker

    def on_init(environment: Environment, **_: object) -> None:
        sale = Sale(ScenarioParams.from_env(), Recorder())
        for user_class in user_classes:
            user_class.sale = sale
        if worker_index(environment) is not None:
            worker_stats.append(WorkerStats(environment))

    def on_test_stop(environment: Environment, **_: object) -> None:
        params = user_classes[0].sale.params
        if not params.results_path or is_master(environment):
            return
        index = worker_index(environment)
        if index is None:
            user_classes[0].sale.recorder.results().save(Path(params.results_path))
            return
        # Statistics first: the master waits for the results file, which comes last.
        worker_stats[0].save(worker_path(Path(params.stats_path), index))
        user_classes[0].sale.recorder.results().save(worker_path(Path(params.results_path), index))

    def on_quitting(environment: Environment, **_: object) -> None:
        params = user_classes[0].sale.params
        if params.results_path:
            wait_for_worker_files(
                environment, lambda index: [worker_path(Path(params.results_path), index)]
            )

    # Locust's EventHook.add_listener carries no annotations.
    events.init.add_listener(on_init)  # type: ignore[no-untyped-call]
    events.test_stop.add_listener(on_test_stop)  # type: ignore[no-untyped-call]
    events.quitting.add_listener(on_quitting)  # type: ignore[no-untyped-call]
