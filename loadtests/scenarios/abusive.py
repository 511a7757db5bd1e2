"""Locust scenario `abusive`: malformed requests and rate-limit abuse mixed into real buying.

Three kinds of users share the run:

* honest buyers, as in `spike`, on the sale item;
* senders of bad input: broken JSON, wrong content type, missing or oversized
  Idempotency-Key, forged, tampered or expired tokens, invalid bodies, a body
  over the size limit, an admin route with a user token, other users' purchase
  ids. Every one of them must be answered 4xx, never 5xx and never 2xx; they
  aim at a decoy item and use user ids of their own, so the check can prove
  they changed nothing (no purchase, stock as set);
* one user hammering an item of its own with bursts of purchases under new
  keys, which the per-user rate limit and the per-user limit must contain.

Run it with `flashsale loadtest abusive`.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent  # type: ignore[import-untyped]
from locust import task

from loadtests.scenarios.common import (
    PURCHASES_PATH,
    Buyer,
    BuyerUser,
    install,
    new_key,
    send,
)
from loadtests.scenarios.results import NO_ANSWER
from services.tokens import issue_token

ABUSER_ROLE = "x"  # the runner checks that users lt-<run>-x-* own no purchase
OVERSIZED_BODY_BYTES = 8192  # the gateway's default limit is 4096
OVERSIZED_KEY_CHARS = 300
JSON = "application/json"
# Twice the default per-user rate (20/s) in each burst, whatever the latency.
HAMMER_BURST = 40
HAMMER_BURST_TIMEOUT_S = 30.0
HAMMER = "POST /v1/purchases (hammer)"


@dataclass(frozen=True, slots=True)
class Abuse:
    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None


def _json_headers(buyer: Buyer, key: str | None = None) -> dict[str, str]:
    return {**buyer.headers(key if key is not None else new_key()), "Content-Type": JSON}


def _purchase(item_id: str, **extra: object) -> str:
    return json.dumps({"item_id": item_id, "quantity": 1, **extra})


class HonestBuyer(BuyerUser):
    weight = 6

    @task
    def buy_once(self) -> None:
        buyer = self.sale.new_buyer()
        answer = self.buy(buyer, self.sale.params.items[0].item_id)
        if answer.purchase_id is not None:
            self.await_final(buyer, answer.purchase_id)


class Hammer(BuyerUser):
    """One user sending bursts of purchases with new keys: the per-user rate limit
    answers 429, and the per-user limit lets at most one of them be confirmed."""

    fixed_count = 1
    concurrency = HAMMER_BURST  # one connection per request of a burst
    buyer: Buyer

    def on_start(self) -> None:
        self.buyer = self.sale.new_buyer("hammer")

    @task
    def hammer(self) -> None:
        item_id = self.sale.params.items[1].item_id
        burst = [
            gevent.spawn(self.buy, self.buyer, item_id, 1, None, None, HAMMER)
            for _ in range(HAMMER_BURST)
        ]
        gevent.joinall(burst, timeout=HAMMER_BURST_TIMEOUT_S)


class BadInputSender(BuyerUser):
    weight = 3
    buyer: Buyer

    def on_start(self) -> None:
        self.buyer = self.sale.new_buyer(ABUSER_ROLE)

    @property
    def decoy(self) -> str:
        return self.sale.params.items[-1].item_id

    @task
    def send_bad_input(self) -> None:
        abuse = random.choice(self.abuses())()
        name = f"bad input: {abuse.name}"
        allowed = {str(code) for code in range(400, 500)}
        answer = send(
            self.client,
            abuse.method,
            abuse.path,
            name,
            allowed,
            headers=abuse.headers,
            data=abuse.data,
        )
        self.sale.recorder.answered(name, answer)
        if answer.label not in allowed | NO_ANSWER:
            self.sale.recorder.broke_rule(name, answer, "bad input must be answered 4xx")

    def abuses(self) -> tuple[Callable[[], Abuse], ...]:
        return (
            self.broken_json,
            self.wrong_content_type,
            self.missing_key,
            self.oversized_key,
            self.forged_token,
            self.tampered_token,
            self.expired_token,
            self.no_token,
            self.invalid_body,
            self.oversized_body,
            self.unknown_item,
            self.admin_route,
            self.someone_elses_purchase,
            self.invalid_wait,
        )

    def broken_json(self) -> Abuse:
        body = f'{{"item_id": "{self.decoy}", "quantity": '
        return Abuse("broken JSON", "POST", PURCHASES_PATH, _json_headers(self.buyer), body)

    def wrong_content_type(self) -> Abuse:
        headers = {**self.buyer.headers(new_key()), "Content-Type": "text/plain"}
        return Abuse("wrong content type", "POST", PURCHASES_PATH, headers, _purchase(self.decoy))

    def missing_key(self) -> Abuse:
        headers = {**self.buyer.headers(), "Content-Type": JSON}
        return Abuse(
            "missing Idempotency-Key", "POST", PURCHASES_PATH, headers, _purchase(self.decoy)
        )

    def oversized_key(self) -> Abuse:
        headers = _json_headers(self.buyer, "k" * OVERSIZED_KEY_CHARS)
        return Abuse(
            "oversized Idempotency-Key", "POST", PURCHASES_PATH, headers, _purchase(self.decoy)
        )

    def forged_token(self) -> Abuse:
        victim = self.sale.params.user_prefix(ABUSER_ROLE) + "victim"
        forged = Buyer(victim, issue_token("not-the-secret", victim, 3600))
        return Abuse(
            "forged token", "POST", PURCHASES_PATH, _json_headers(forged), _purchase(self.decoy)
        )

    def tampered_token(self) -> Abuse:
        # A genuine signature over another user id: the signature no longer matches.
        victim = self.sale.params.user_prefix(ABUSER_ROLE) + "victim"
        _, expiry, signature = self.buyer.token.split(".")
        encoded = base64.urlsafe_b64encode(victim.encode()).decode().rstrip("=")
        tampered = Buyer(victim, f"{encoded}.{expiry}.{signature}")
        return Abuse(
            "tampered token", "POST", PURCHASES_PATH, _json_headers(tampered), _purchase(self.decoy)
        )

    def expired_token(self) -> Abuse:
        expired = Buyer(
            self.buyer.user_id, issue_token(self.sale.params.secret, self.buyer.user_id, -60)
        )
        return Abuse(
            "expired token", "POST", PURCHASES_PATH, _json_headers(expired), _purchase(self.decoy)
        )

    def no_token(self) -> Abuse:
        headers = {"Idempotency-Key": new_key(), "Content-Type": JSON}
        return Abuse("no token", "POST", PURCHASES_PATH, headers, _purchase(self.decoy))

    def invalid_body(self) -> Abuse:
        body = random.choice(
            (
                "[1, 2, 3]",
                json.dumps({"item_id": self.decoy, "quantity": 0}),
                json.dumps({"item_id": self.decoy, "quantity": "1"}),
                json.dumps({"item_id": self.decoy, "quantity": 2}),  # above the limit of 1
                json.dumps({"item_id": "../../etc/passwd"}),
                _purchase(self.decoy, coupon="FREE"),
                json.dumps({"quantity": 1}),
            )
        )
        return Abuse("invalid body", "POST", PURCHASES_PATH, _json_headers(self.buyer), body)

    def oversized_body(self) -> Abuse:
        body = _purchase(self.decoy, padding="x" * OVERSIZED_BODY_BYTES)
        return Abuse("oversized body", "POST", PURCHASES_PATH, _json_headers(self.buyer), body)

    def unknown_item(self) -> Abuse:
        missing = f"{self.decoy}-missing"
        return Abuse(
            "unknown item", "POST", PURCHASES_PATH, _json_headers(self.buyer), _purchase(missing)
        )

    def admin_route(self) -> Abuse:
        body = json.dumps({"stock": 0, "per_user_limit": 100})
        return Abuse(
            "admin route, user token",
            "PUT",
            f"/v1/items/{self.decoy}",
            _json_headers(self.buyer),
            body,
        )

    def someone_elses_purchase(self) -> Abuse:
        accepted = self.sale.recorder.accepted
        # The latest purchase accepted for an honest buyer; a made-up id before the first.
        target = next(reversed(accepted), None) or f"p_{uuid.uuid4().hex}"
        return Abuse(
            "someone else's purchase",
            "GET",
            f"{PURCHASES_PATH}/{target}?wait=0",
            self.buyer.headers(),
        )

    def invalid_wait(self) -> Abuse:
        wait = random.choice(("abc", "-1", "31", "nan", "1e9"))
        path = f"{PURCHASES_PATH}/p_{uuid.uuid4().hex}?wait={wait}"
        return Abuse("invalid wait", "GET", path, self.buyer.headers())


install(HonestBuyer, Hammer, BadInputSender)
