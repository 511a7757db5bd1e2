"""Locust scenario `spike`: a crowd of distinct buyers storms one item of 100 units.

Every Locust user is spawned within the first second and buys without pause;
each iteration is a new person with its own user id and Idempotency-Key who,
when accepted, long-polls GET /v1/purchases/{id}?wait= for the final answer.
Run it with `flashsale loadtest spike`.
"""

from __future__ import annotations

from locust import task

from loadtests.scenarios.common import BuyerUser, install


class SpikeBuyer(BuyerUser):
    @task
    def buy_once(self) -> None:
        buyer = self.sale.new_buyer()
        item = self.sale.params.items[0]
        answer = self.buy(buyer, item.item_id)
        if answer.purchase_id is not None:
            self.await_final(buyer, answer.purchase_id)


install(SpikeBuyer)
