"""The systems under test as the benchmark sees them: make an item, count what sold."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import asyncpg

from loadtests.bench.errors import BenchError
from loadtests.sale.admin import ItemNotCreatedError, create_item
from loadtests.sale.target import Target
from services.store.items import get_item
from services.store.purchases import item_counts

SETTLE_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Tally:
    """What Postgres says after a run."""

    stock: int
    confirmed: int
    last_sale_at: float | None  # wall clock of the last unit sold

    @property
    def oversold(self) -> int:
        return max(0, self.confirmed - self.stock)


class SaleSystem(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def purchases_url(self) -> str: ...

    async def create_item(self, item_id: str, stock: int) -> None: ...

    async def settle(self, item_id: str, accepted: int, timeout_s: float) -> None:
        """Wait (bounded) until work still in flight after the answers is done."""
        ...

    async def tally(self, item_id: str) -> Tally | None: ...


@dataclass(frozen=True, slots=True)
class FlashsaleSystem:
    """The real stack: items through the admin API, results read from Postgres."""

    target: Target
    pool: asyncpg.Pool
    queries: dict[str, str]
    name: str = "flashsale"

    @property
    def purchases_url(self) -> str:
        return f"{self.target.gateway_url}/v1/purchases"

    async def create_item(self, item_id: str, stock: int) -> None:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                await create_item(session, self.target, item_id, stock)
        except (aiohttp.ClientError, TimeoutError, ItemNotCreatedError) as exc:
            raise BenchError(f"the gateway did not create {item_id}: {exc}") from exc

    async def settle(self, item_id: str, accepted: int, timeout_s: float) -> None:
        """Until every purchase answered 202 has its final state in Postgres."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = await item_counts(self.pool, item_id)
            if sum(purchases for purchases, _ in counts.values()) >= accepted:
                return
            await asyncio.sleep(SETTLE_POLL_S)

    async def tally(self, item_id: str) -> Tally:
        item = await get_item(self.pool, item_id)
        counts = await item_counts(self.pool, item_id)
        last = await self.pool.fetchval(self.queries["flashsale_last_confirmation"], item_id)
        return Tally(
            stock=item.stock,
            confirmed=int(counts.get("confirmed", (0, 0))[1]),
            last_sale_at=None if last is None else last.timestamp(),
        )


@dataclass(frozen=True, slots=True)
class BaselineSystem:
    """A baseline server; its sales are final when answered.

    `orders_are_sales`: the lock design records an order per sale (what the
    customers were promised); the row design only counts `sold`.
    """

    name: str
    url: str
    pool: asyncpg.Pool
    queries: dict[str, str]
    orders_are_sales: bool

    @property
    def purchases_url(self) -> str:
        return f"{self.url}/v1/purchases"

    async def create_item(self, item_id: str, stock: int) -> None:
        await self.pool.execute(self.queries["create_item"], item_id, stock)

    async def settle(self, item_id: str, accepted: int, timeout_s: float) -> None:
        return None

    async def tally(self, item_id: str) -> Tally | None:
        row = await self.pool.fetchrow(self.queries["tally"], item_id)
        if row is None:
            return None
        sold = int(row["orders"] if self.orders_are_sales else row["sold"])
        last = row["last_sale_at"]
        return Tally(int(row["stock"]), sold, None if last is None else last.timestamp())


@dataclass(frozen=True, slots=True)
class BareSystem:
    """The ceiling: nothing is sold, nothing to count."""

    url: str
    name: str = "bare_http"

    @property
    def purchases_url(self) -> str:
        return f"{self.url}/v1/purchases"

    async def create_item(self, item_id: str, stock: int) -> None:
        return None

    async def settle(self, item_id: str, accepted: int, timeout_s: float) -> None:
        return None

    async def tally(self, item_id: str) -> Tally | None:
        return None
