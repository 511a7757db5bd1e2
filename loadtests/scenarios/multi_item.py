"""Locust scenario `multi-item`: many items, skewed (Zipf-like) popularity, various stocks.

Fifty items with stocks from 5 to 2000 and per-user limits of 1 to 3; the n-th
item draws buyers in proportion to 1/n**1.1, so a few items sell out in
seconds while the tail barely moves. Each buyer picks one to three items by
that popularity, buys a random quantity within the limit, and sometimes comes
back for its first item with a new key, which the per-user limit must refuse.
Run it with `flashsale loadtest multi-item`.
"""

from __future__ import annotations

import itertools
import random

from locust import task

from loadtests.scenarios.common import BuyerUser, install
from loadtests.scenarios.params import ItemSpec

BASKET_MAX_ITEMS = 3
COME_BACK_PROBABILITY = 0.2


class MultiItemBuyer(BuyerUser):
    cumulative_weights: list[float]

    def on_start(self) -> None:
        weights = [item.weight for item in self.sale.params.items]
        self.cumulative_weights = list(itertools.accumulate(weights))

    def _basket(self) -> list[ItemSpec]:
        picks = random.choices(
            self.sale.params.items,
            cum_weights=self.cumulative_weights,
            k=random.randint(1, BASKET_MAX_ITEMS),
        )
        return list({item.item_id: item for item in picks}.values())

    @task
    def buy_a_basket(self) -> None:
        buyer = self.sale.new_buyer()
        basket = self._basket()
        if random.random() < COME_BACK_PROBABILITY:
            basket.append(basket[0])  # same item again, new key: above the limit or not
        accepted: list[str] = []
        for item in basket:
            answer = self.buy(buyer, item.item_id, random.randint(1, item.per_user_limit))
            if answer.purchase_id is not None:
                accepted.append(answer.purchase_id)
        for purchase_id in accepted:
            self.await_final(buyer, purchase_id)


install(MultiItemBuyer)
