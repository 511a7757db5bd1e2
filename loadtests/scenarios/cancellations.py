"""Locust scenario `cancellations`: units come back while the sale runs, and sell again.

Two small items that sell out in the first seconds, so every unit that comes
back is fought over by the buyers still arriving:

* `cancel` sells outright. A share of its buyers cancel their confirmed
  purchase a moment later (some twice: a cancel is idempotent, the second
  answer is 200 again); the unit goes back on sale at once.
* `hold` sells on hold (`hold_s` of a few seconds). The payment system (the
  admin token) pays a share of the holds in time and another share late, after
  `pay_by`, which must be answered 409 `expired`; a few buyers cancel their
  hold instead; the rest are never paid and expire.

The invariant check then wants, per item: sold == confirmed + paid units, each
cancel or expiry returned once, every returned unit sold again or back in the
filter, and an event for every status change. Run it with
`flashsale loadtest cancellations`.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import gevent  # type: ignore[import-untyped]
from locust import task

from loadtests.scenarios.common import (
    PURCHASES_PATH,
    Answer,
    Buyer,
    BuyerUser,
    install,
    send,
)
from loadtests.scenarios.results import NO_ANSWER

CANCEL_SHARE = 0.3
CANCEL_TWICE_SHARE = 0.3  # of the cancellers
CANCEL_DELAY_S = 0.3  # a buyer changes their mind within this long
PAY_IN_TIME_SHARE = 0.4
PAY_LATE_SHARE = 0.2
CANCEL_HOLD_SHARE = 0.1
# An in-time payment comes within this share of hold_s.
PAY_IN_TIME_FRACTION = 0.25
# A late payment comes this long after pay_by by our clock: pay_by is judged by
# the database's clock, and the margin covers the two clocks' disagreement.
LATE_MARGIN_S = 1.0

CANCEL = "POST /v1/purchases/[id]/cancel"
CANCEL_AGAIN = "POST /v1/purchases/[id]/cancel (again)"
CANCEL_HOLD = "POST /v1/purchases/[id]/cancel (hold)"
PAY = "POST /v1/purchases/[id]/pay"
PAY_LATE = "POST /v1/purchases/[id]/pay (after pay_by)"
# 429 and 503 (queued, not applied yet) are answers a busy sale may give.
BUSY = frozenset({"429", "503"})
CANCEL_ANSWERS = frozenset({"200"}) | BUSY
# An in-time payment may still lose the race against pay_by on a slow machine.
PAY_ANSWERS = frozenset({"200", "409"}) | BUSY
PAY_LATE_ANSWERS = frozenset({"409"}) | BUSY


def _status(answer: Answer) -> str:
    return str(answer.body.get("status", ""))


def _seconds_until(pay_by: object) -> float | None:
    if not isinstance(pay_by, str):
        return None
    return (datetime.fromisoformat(pay_by) - datetime.now(UTC)).total_seconds()


class LifecycleUser(BuyerUser):
    abstract = True

    def cancel(
        self, buyer: Buyer, purchase_id: str, name: str = CANCEL, on_hold: bool = False
    ) -> Answer:
        """The owner cancels; a hold may have expired first on a slow machine."""
        path = f"{PURCHASES_PATH}/{purchase_id}/cancel"
        answer = send(self.client, "POST", path, name, CANCEL_ANSWERS, headers=buyer.headers())
        self.sale.recorder.answered(name, answer)
        if answer.label in NO_ANSWER | BUSY:
            return answer
        if on_hold and answer.status == 409 and answer.body.get("error") == "not_cancellable":
            return answer
        if answer.status != 200 or _status(answer) != "cancelled":
            self.sale.recorder.broke_rule(
                name, answer, "the owner's cancel of a confirmed purchase must answer cancelled"
            )
        return answer

    def pay(self, purchase_id: str, late: bool) -> None:
        """The payment system: admin token, after the buyer paid (or too late)."""
        name = PAY_LATE if late else PAY
        headers = {"Authorization": f"Bearer {self.sale.params.admin_token}"}
        path = f"{PURCHASES_PATH}/{purchase_id}/pay"
        allowed = PAY_LATE_ANSWERS if late else PAY_ANSWERS
        answer = send(self.client, "POST", path, name, allowed, headers=headers)
        self.sale.recorder.answered(name, answer)
        if answer.label in NO_ANSWER | BUSY:
            return
        if answer.status == 200 and _status(answer) == "paid" and not late:
            return
        if answer.status == 409 and answer.body.get("error") == "expired":
            return
        why = "a payment after pay_by must answer 409 expired" if late else "paid or expired"
        self.sale.recorder.broke_rule(name, answer, why)


class CancellingBuyer(LifecycleUser):
    @task
    def buy_maybe_cancel(self) -> None:
        buyer = self.sale.new_buyer()
        answer = self.buy(buyer, self.sale.params.items[0].item_id)
        if answer.purchase_id is None:
            return
        final = self.await_final(buyer, answer.purchase_id)
        if _status(final) != "confirmed" or random.random() >= CANCEL_SHARE:
            return
        gevent.sleep(random.uniform(0, CANCEL_DELAY_S))
        first = self.cancel(buyer, answer.purchase_id)
        if first.status == 200 and random.random() < CANCEL_TWICE_SHARE:
            self.cancel(buyer, answer.purchase_id, CANCEL_AGAIN)


class HoldingBuyer(LifecycleUser):
    @task
    def buy_on_hold(self) -> None:
        buyer = self.sale.new_buyer()
        item = self.sale.params.items[1]
        answer = self.buy(buyer, item.item_id)
        if answer.purchase_id is None:
            return
        final = self.await_final(buyer, answer.purchase_id)
        left_s = _seconds_until(final.body.get("pay_by"))
        if _status(final) != "confirmed" or left_s is None:
            return
        draw = random.random()
        if draw < PAY_IN_TIME_SHARE:
            delay_s = random.uniform(0, (item.hold_s or 0) * PAY_IN_TIME_FRACTION)
            gevent.spawn_later(delay_s, self.pay, answer.purchase_id, False)
        elif draw < PAY_IN_TIME_SHARE + PAY_LATE_SHARE:
            # The buyer goes on; the payment system answers long after pay_by.
            gevent.spawn_later(max(left_s, 0) + LATE_MARGIN_S, self.pay, answer.purchase_id, True)
        elif draw < PAY_IN_TIME_SHARE + PAY_LATE_SHARE + CANCEL_HOLD_SHARE:
            self.cancel(buyer, answer.purchase_id, CANCEL_HOLD, on_hold=True)
        # Otherwise nobody pays: the hold expires and its unit goes back on sale.


install(CancellingBuyer, HoldingBuyer)
