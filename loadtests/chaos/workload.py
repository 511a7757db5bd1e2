"""The chaos workload: many buyers on many items, recorded op by op in a history.

Through the gateway's HTTP API only (api.md), as careful clients would behave:

* items with skewed (Zipf-like) popularity, each with its own stock and
  per-user limit; buyers come from a pool of users, so limits bite;
* multi-unit buys (1-3 units, within the item's per-user limit);
* a buyer whose request got no answer, a 503, a 429 or a 409 `in_progress`
  retries with the SAME Idempotency-Key; some buyers send their key once more
  after the purchase is final (a double click after a reload);
* every 202 is polled with `GET ?wait=` until it is final;
* an admin raises and lowers stock mid-sale (a lower stock than sold is
  answered 409, a legal answer).

Bounded in time and count: buyers start for `duration_s` at `buyers_per_s` (at
most `max_buyers`, at most `MAX_ACTIVE_BUYERS` at once), each gives up after a
bounded number of attempts, and whatever is still running `DRAIN_S` after the
end is cut short (and recorded as such).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from loadtests.chaos.history import GET, GET_ITEM, PURCHASE, PUT_ITEM, HistoryWriter, Op
from loadtests.sale.client import NO_ANSWER, GatewayClient
from loadtests.sale.target import Target

ITEMS = 1200
BUYERS_PER_S = 20.0
USERS = 400
ZIPF_EXPONENT = 1.1
ADMIN_EVERY_S = 1.5
STOCK_RANGE = (2, 25)
LIMITS = (1, 1, 2, 3)
MAX_QUANTITY = 3
MAX_ACTIVE_BUYERS = 300
CONNECTIONS = 64
SETUP_CONCURRENCY = 16
POST_TIMEOUT_S = 5.0
POLL_WAIT_S = 5
POST_ATTEMPTS = 12
POST_GIVE_UP_S = 40.0
POLLS = 24
POLL_GIVE_UP_S = 90.0
RETRY_PAUSE_S = (0.3, 1.5)
RESUBMIT_CHANCE = 0.1
ADMIN_STOCK_STEP = (-6, 8)
DRAIN_S = 100.0
FINAL = frozenset({"confirmed", "rejected", "cancelled", "paid", "expired"})
RETRY_ERRORS = frozenset({"unavailable", "rate_limited", "in_progress"})


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    duration_s: float
    seed: int
    items: int = ITEMS
    buyers_per_s: float = BUYERS_PER_S
    users: int = USERS
    max_buyers: int | None = None

    @property
    def buyer_cap(self) -> int:
        planned = int(self.duration_s * self.buyers_per_s) + 1
        return planned if self.max_buyers is None else min(planned, self.max_buyers)


@dataclass(frozen=True, slots=True)
class ItemPlan:
    item_id: str
    stock: int
    per_user_limit: int


@dataclass(frozen=True, slots=True)
class BuyerPlan:
    client: str
    user: str
    key: str
    item: ItemPlan
    quantity: int
    resubmit: bool
    seed: int


def plan_items(config: WorkloadConfig) -> list[ItemPlan]:
    rng = random.Random(config.seed)
    return [
        ItemPlan(f"chaos-{config.seed}-{n:05d}", rng.randint(*STOCK_RANGE), rng.choice(LIMITS))
        for n in range(config.items)
    ]


class Popularity:
    """Item n (from 0) is chosen with weight 1 / (n + 1) ** ZIPF_EXPONENT."""

    def __init__(self, items: Sequence[ItemPlan]) -> None:
        self.items = list(items)
        weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(self.items))]
        self.cumulative = list(itertools.accumulate(weights))

    def pick(self, rng: random.Random) -> ItemPlan:
        return rng.choices(self.items, cum_weights=self.cumulative)[0]


class Workload:
    def __init__(
        self, client: GatewayClient, writer: HistoryWriter, config: WorkloadConfig
    ) -> None:
        self.client = client
        self.writer = writer
        self.config = config
        self.items = plan_items(config)
        self.popularity = Popularity(self.items)

    async def create_items(self) -> None:
        """Every item of the plan, before the sale (and before any fault)."""
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def create(item: ItemPlan) -> None:
            async with gate:
                status = await self._put_item("setup", item, item.stock, None)
            if status not in (200, 201):
                raise RuntimeError(f"creating {item.item_id} answered {status}")

        async with asyncio.TaskGroup() as group:
            for item in self.items:
                group.create_task(create(item))

    async def _put_item(self, client: str, item: ItemPlan, stock: int, previous: int | None) -> int:
        body = {"stock": stock, "per_user_limit": item.per_user_limit}
        with self.writer.op(
            PUT_ITEM, client, item=item.item_id, stock=stock, previous_stock=previous
        ) as op:
            status, answer, _ = await self.client.call(
                "PUT",
                f"/v1/items/{item.item_id}",
                self.client.target.admin_token,
                POST_TIMEOUT_S * 2,
                json=body,
            )
            op.answered(status, answer)
            op.stock = stock  # the stock asked for, whatever the answer says
            return status

    async def run(self) -> None:
        """Buyers and the admin for `duration_s`, then drain (bounded)."""
        rng = random.Random(self.config.seed + 7)
        deadline = time.monotonic() + self.config.duration_s
        tasks = {asyncio.create_task(self._admin(deadline, random.Random(self.config.seed + 3)))}
        active = asyncio.Semaphore(MAX_ACTIVE_BUYERS)
        for index in range(self.config.buyer_cap):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(active.acquire(), timeout=left)
            except TimeoutError:
                break
            task = asyncio.create_task(self._buyer(self._plan_buyer(index, rng)))
            task.add_done_callback(lambda _: active.release())
            tasks.add(task)
            await asyncio.sleep(rng.expovariate(self.config.buyers_per_s))
        await _drain(tasks, DRAIN_S)

    def _plan_buyer(self, index: int, rng: random.Random) -> BuyerPlan:
        item = self.popularity.pick(rng)
        return BuyerPlan(
            client=f"buyer-{index}",
            user=f"user-{rng.randrange(self.config.users)}",
            key=f"k{index}-{rng.getrandbits(40):010x}",
            item=item,
            quantity=rng.randint(1, min(MAX_QUANTITY, item.per_user_limit)),
            resubmit=rng.random() < RESUBMIT_CHANCE,
            seed=rng.getrandbits(32),
        )

    async def _buyer(self, plan: BuyerPlan) -> None:
        rng = random.Random(plan.seed)
        purchase_id = await self._submit(plan, rng)
        if purchase_id is None:
            return
        final = await self._poll(plan, purchase_id, rng)
        if final and plan.resubmit:
            await self._post(plan)

    async def _submit(self, plan: BuyerPlan, rng: random.Random) -> str | None:
        """POST until an answer that is not worth retrying; the purchase id of a 202."""
        give_up = time.monotonic() + POST_GIVE_UP_S
        for _attempt in range(POST_ATTEMPTS):
            op, retry_after = await self._post(plan)
            if op.http_status == 202 and op.purchase_id:
                return op.purchase_id
            retry = op.http_status == NO_ANSWER or op.error in RETRY_ERRORS
            if not retry or time.monotonic() > give_up:
                return None
            await asyncio.sleep(max(retry_after, rng.uniform(*RETRY_PAUSE_S)))
        return None

    async def _post(self, plan: BuyerPlan) -> tuple[Op, float]:
        with self.writer.op(
            PURCHASE,
            plan.client,
            user=plan.user,
            key=plan.key,
            item=plan.item.item_id,
            quantity=plan.quantity,
        ) as op:
            status, body, retry_after = await self.client.call(
                "POST",
                "/v1/purchases",
                self.client.token(plan.user),
                POST_TIMEOUT_S,
                json={"item_id": plan.item.item_id, "quantity": plan.quantity},
                headers={"Idempotency-Key": plan.key},
            )
            op.answered(status, body)
        return op, retry_after

    async def _poll(self, plan: BuyerPlan, purchase_id: str, rng: random.Random) -> bool:
        """GET ?wait= until the purchase is final; False when the buyer gave up."""
        give_up = time.monotonic() + POLL_GIVE_UP_S
        for _attempt in range(POLLS):
            with self.writer.op(
                GET,
                plan.client,
                user=plan.user,
                key=plan.key,
                item=plan.item.item_id,
                purchase_id=purchase_id,
            ) as op:
                status, body, _ = await self.client.call(
                    "GET",
                    f"/v1/purchases/{purchase_id}?wait={POLL_WAIT_S}",
                    self.client.token(plan.user),
                    POLL_WAIT_S + POST_TIMEOUT_S,
                )
                op.answered(status, body)
            if status == 200 and op.status in FINAL:
                return True
            if time.monotonic() > give_up:
                return False
            if status != 200:
                await asyncio.sleep(rng.uniform(*RETRY_PAUSE_S))
        return False

    async def _admin(self, deadline: float, rng: random.Random) -> None:
        """Raise and lower stock of popular items now and then, until the deadline."""
        while True:
            await asyncio.sleep(rng.uniform(ADMIN_EVERY_S / 2, ADMIN_EVERY_S * 1.5))
            if time.monotonic() >= deadline:
                return
            item = self.popularity.pick(rng)
            current = await self._read_stock(item)
            if current is None:
                continue
            step = rng.randint(*ADMIN_STOCK_STEP) or 1
            await self._put_item("admin", item, max(0, current + step), current)

    async def _read_stock(self, item: ItemPlan) -> int | None:
        with self.writer.op(GET_ITEM, "admin", item=item.item_id) as op:
            status, body, _ = await self.client.call(
                "GET", f"/v1/items/{item.item_id}", self.client.target.admin_token, POST_TIMEOUT_S
            )
            op.answered(status, body)
        return op.stock if status == 200 else None


async def _drain(tasks: set[asyncio.Task[None]], bound_s: float) -> None:
    """Wait for every task at most `bound_s`; cut the rest short (their ops say so)."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=bound_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def run_workload(
    target: Target, writer: HistoryWriter, config: WorkloadConfig, started: asyncio.Event
) -> None:
    """Create the items, set `started` (the nemesis may begin), then run the sale."""
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        workload = Workload(GatewayClient(session, target), writer, config)
        await workload.create_items()
        started.set()
        await workload.run()
