"""The sharded stock filter: the fast, fallible gate in front of Kafka and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import RedisClient, redis_errors
from services.stockfilter.keys import reservations_key, stock_key
from services.stockfilter.scripts import register

RESERVED = 1
NOT_ENOUGH = 0
ALREADY_RESERVED = -1
SHARD_MISSING = -2


@dataclass(frozen=True, slots=True)
class Reservation:
    """Where the units came from; shard is None when no shard had enough."""

    shard: int | None
    # Some shard had no key at all: Redis lost the filter and it must be rebuilt.
    missing: bool = False
    empty_shards: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ShardSnapshot:
    """One shard at one instant: units (None when Redis lost the shard) and records."""

    units: int | None
    records: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class ShardCount:
    """One shard at one instant: units (None when Redis lost the shard) and how
    many reservation records it holds."""

    units: int | None
    records: int


@dataclass(frozen=True, slots=True)
class Settlement:
    item_id: str
    shard: int
    purchase_id: str
    quantity: int
    give_back: bool


class StockFilter:
    def __init__(self, redis: RedisClient, shards: int, pipe: AutoPipeline | None = None) -> None:
        self.redis = redis
        self.shards = shards
        self.pipe = pipe or AutoPipeline(redis)
        self._reserve = register(redis, "reserve.lua")
        self._settle = register(redis, "settle.lua")
        self._snapshot = register(redis, "snapshot.lua")
        self._counts = register(redis, "counts.lua")
        self._adjust = register(redis, "adjust.lua")
        self._fill = register(redis, "fill.lua")

    def home_shard(self, purchase_id: str) -> int:
        """The shard a purchase tries first: a function of its id, so a retry or a
        takeover of a dead admission looks where the first attempt did."""
        digest = hashlib.blake2b(purchase_id.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % self.shards

    def shard_order(self, start: int, skip: Iterable[int] = ()) -> list[int]:
        """Shards from `start` on, known-empty ones (but never `start`) left out."""
        skipped = set(skip)
        order = [(start + i) % self.shards for i in range(self.shards)]
        return [s for s in order if s == start or s not in skipped]

    async def reserve_at(
        self, item_id: str, shard: int, purchase_id: str, quantity: int, record: bytes
    ) -> tuple[int, int]:
        """(code, units left) of reserve.lua on one shard."""
        keys = [stock_key(item_id, shard), reservations_key(item_id, shard)]
        async with redis_errors():
            # A second run finds its own record and takes nothing (ALREADY_RESERVED).
            code, left = await self.pipe.script(
                self._reserve, keys, [purchase_id, quantity, record], idempotent=True
            )
        return int(code), int(left)

    async def reserve(
        self,
        item_id: str,
        purchase_id: str,
        quantity: int,
        record_for: Callable[[int], bytes],
        skip: Iterable[int] = (),
        first: int | None = None,
    ) -> Reservation:
        """Try shards starting at a random (or given) one, skipping known-empty ones."""
        start = random.randrange(self.shards) if first is None else first
        empty: set[int] = set()
        missing = False
        for shard in self.shard_order(start, skip):
            code, left = await self.reserve_at(
                item_id, shard, purchase_id, quantity, record_for(shard)
            )
            if code in (RESERVED, ALREADY_RESERVED):
                return Reservation(shard, missing, frozenset(empty))
            if code == SHARD_MISSING:
                missing = True  # not "empty": Redis lost it, and the rebuild refills it
            elif left <= 0:
                empty.add(shard)  # too few units for this request is not "empty"
        return Reservation(None, missing, frozenset(empty))

    async def settle(self, settlements: Iterable[Settlement]) -> int:
        """Drop records of final purchases, giving back units of rejected ones."""
        by_shard: dict[tuple[str, int], list[Any]] = {}
        for s in settlements:
            args = by_shard.setdefault((s.item_id, s.shard), [])
            args += [s.purchase_id, s.quantity, "1" if s.give_back else "0"]
        returned = 0
        for (item_id, shard), args in by_shard.items():
            keys = [stock_key(item_id, shard), reservations_key(item_id, shard)]
            async with redis_errors():
                returned += int(await self._settle(keys=keys, args=args))
        return returned

    async def set_remaining(
        self,
        item_id: str,
        remaining_units: int,
        units_per_request: int = 1,
        only_missing: bool = False,
    ) -> None:
        """Spread `remaining_units` over the shards (a new item's filter).

        A request takes its units from one shard, so a small stock goes into fewer
        shards, each holding at least `units_per_request` where possible. With
        `only_missing`, shards that exist are left as they are.
        """
        remaining_units = max(remaining_units, 0)
        used = max(1, min(self.shards, remaining_units // max(units_per_request, 1)))
        base, extra = divmod(remaining_units, used)
        for shard in range(self.shards):
            units = base + (1 if shard < extra else 0) if shard < used else 0
            if only_missing:
                await self.fill(item_id, shard, units)
            else:
                async with redis_errors():
                    await self.redis.set(stock_key(item_id, shard), units)

    async def snapshot(self, item_id: str) -> list[ShardSnapshot]:
        """Every shard, each read atomically with its records (one round trip in all)."""
        return list(
            await asyncio.gather(*(self._shard_snapshot(item_id, s) for s in range(self.shards)))
        )

    async def _shard_snapshot(self, item_id: str, shard: int) -> ShardSnapshot:
        keys = [stock_key(item_id, shard), reservations_key(item_id, shard)]
        async with redis_errors():
            units, flat = await self.pipe.script(self._snapshot, keys, [], idempotent=True)
        records = {_text(flat[i]): _bytes(flat[i + 1]) for i in range(0, len(flat), 2)}
        return ShardSnapshot(None if units is None else int(units), records)

    async def counts(self, item_id: str) -> list[ShardCount]:
        """Every shard's units and record count, each shard read atomically."""
        return list(
            await asyncio.gather(*(self._shard_count(item_id, s) for s in range(self.shards)))
        )

    async def _shard_count(self, item_id: str, shard: int) -> ShardCount:
        keys = [stock_key(item_id, shard), reservations_key(item_id, shard)]
        async with redis_errors():
            units, records = await self.pipe.script(self._counts, keys, [], idempotent=True)
        return ShardCount(None if units is None else int(units), int(records))

    async def adjust(self, item_id: str, shard: int, units: int) -> bool:
        """Add `units` (may be negative) to a shard that exists; False when it is
        missing. Never takes a shard below zero (adjust.lua)."""
        return await self.add_units(item_id, shard, units) is not None

    async def add_units(self, item_id: str, shard: int, units: int) -> int | None:
        """Units added to the shard (negative: taken, at most what it held), or None
        when the shard is missing."""
        keys = [stock_key(item_id, shard)]
        async with redis_errors():
            code, _level, added = await self.pipe.script(self._adjust, keys, [units])
        return None if int(code) == -1 else int(added)

    async def fill(self, item_id: str, shard: int, units: int) -> bool:
        """Set a missing shard; False when it exists already."""
        async with redis_errors():
            done = await self.pipe.script(self._fill, [stock_key(item_id, shard)], [units])
        return int(done) == 1

    async def shard_levels(self, item_id: str) -> list[int | None]:
        """Units left per shard (None: the shard is missing), read side by side."""
        async with redis_errors():
            raws = await asyncio.gather(
                *(self.pipe.get(stock_key(item_id, shard)) for shard in range(self.shards))
            )
        return [None if raw is None else int(raw) for raw in raws]

    async def reservations(self, item_id: str) -> dict[int, dict[str, bytes]]:
        """Reservation records per shard: purchase id -> message bytes."""
        found: dict[int, dict[str, bytes]] = {}
        async with redis_errors():
            for shard in range(self.shards):
                raw = await self.redis.hgetall(reservations_key(item_id, shard))
                found[shard] = {_text(key): _bytes(value) for key, value in raw.items()}
        return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
