"""Locust scenario `retry-storm`: impatient clients retry with the same Idempotency-Key.

Every buyer has one key. Its first attempts use client timeouts shorter than an
admission takes under load, so they expire while the gateway is still working
and the client sends the same key again, with a longer timeout each time;
some attempts go out twice at once (a double click), and some accepted buyers
send the key once more afterwards. The results file records every purchase id
each key was answered with: the check wants exactly one per key, and one
purchase per key in Postgres. Run it with `flashsale loadtest retry-storm`.
"""

from __future__ import annotations

import random

import gevent  # type: ignore[import-untyped]
from locust import task
from locust.contrib.fasthttp import FastHttpSession

from loadtests.scenarios.common import (
    BUY,
    Answer,
    Buyer,
    BuyerUser,
    install,
    new_key,
)
from loadtests.scenarios.results import NO_ANSWER

# Client timeout of each successive attempt: the first ones expire mid-admission.
ATTEMPT_TIMEOUTS_S = (0.002, 0.01, 0.05, 0.25, 2.0)
BACKOFF_S = 0.005  # doubled after each attempt
TWIN_PROBABILITY = 0.3  # an attempt sent twice at the same moment
LATE_REPLAY_PROBABILITY = 0.3  # an accepted buyer sends its key once more
RETRY = "POST /v1/purchases (retry)"
TWIN = "POST /v1/purchases (twin)"
LATE = "POST /v1/purchases (late replay)"
# A replay of an accepted key gets that purchase again: never sold_out, never another id.
LATE_ANSWERS = frozenset({"202", "429", "503"}) | NO_ANSWER


def settles(answer: Answer) -> bool:
    """Whether a client stops retrying: accepted, or told the item is sold out."""
    return answer.status == 202 or answer.body.get("error") == "sold_out"


class RetryStormBuyer(BuyerUser):
    sessions: list[FastHttpSession]

    def on_start(self) -> None:
        self.sessions = [self._session(timeout_s) for timeout_s in ATTEMPT_TIMEOUTS_S]

    def _session(self, timeout_s: float) -> FastHttpSession:
        return FastHttpSession(
            self.host,
            request_event=self.environment.events.request,
            user=self,
            network_timeout=timeout_s,
            connection_timeout=max(timeout_s, 0.5),
            concurrency=2,
            max_retries=0,  # retries are this scenario's business, with the same key
        )

    @task
    def buy_with_retries(self) -> None:
        buyer = self.sale.new_buyer()
        key = new_key()
        item_id = self.sale.params.items[0].item_id
        accepted = self._attempts(buyer, key, item_id)
        self.sale.recorder.key_answered(buyer, key, accepted)
        if accepted is None:
            return
        if random.random() < LATE_REPLAY_PROBABILITY:
            self._late_replay(buyer, key, item_id)
        self.await_final(buyer, accepted)

    def _attempts(self, buyer: Buyer, key: str, item_id: str) -> str | None:
        for attempt, session in enumerate(self.sessions):
            answers = self._attempt(buyer, key, item_id, session, RETRY if attempt else BUY)
            ids = [a.purchase_id for a in answers if a.purchase_id is not None]
            for purchase_id in ids:
                self.sale.recorder.key_answered(buyer, key, purchase_id)
            if ids:
                return ids[0]
            if any(settles(a) for a in answers):
                return None
            gevent.sleep(BACKOFF_S * 2**attempt)
        return None

    def _attempt(
        self, buyer: Buyer, key: str, item_id: str, session: FastHttpSession, name: str
    ) -> list[Answer]:
        if random.random() >= TWIN_PROBABILITY:
            return [self.buy(buyer, item_id, key=key, session=session, name=name)]
        twins = [
            gevent.spawn(self.buy, buyer, item_id, 1, key, session, label) for label in (name, TWIN)
        ]
        gevent.joinall(twins, timeout=ATTEMPT_TIMEOUTS_S[-1] * 2)
        return [twin.value for twin in twins if twin.successful()]

    def _late_replay(self, buyer: Buyer, key: str, item_id: str) -> None:
        answer = self.buy(buyer, item_id, key=key, session=self.client, name=LATE)
        self.sale.recorder.key_answered(buyer, key, answer.purchase_id)
        if answer.label not in LATE_ANSWERS:
            self.sale.recorder.broke_rule(
                LATE, answer, "a replay of an accepted key must name the same purchase"
            )


install(RetryStormBuyer)
