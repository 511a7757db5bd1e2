"""In-process caches of one gateway: item metadata, sold-out items, empty shards.

They only save Redis and Postgres calls; a stale hint costs a wrong fast answer
for at most its time to live, never a wrong sale (Postgres decides).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from services.store.items import Item

MAX_ENTRIES = 100_000
VIEW_TTL_S = 0.1


@dataclass
class ItemHints:
    item_ttl_s: float
    sold_out_ttl_s: float
    _items: dict[str, tuple[Item, float]] = field(default_factory=dict)
    _sold_out: dict[str, float] = field(default_factory=dict)
    _empty_shards: dict[str, tuple[set[int], float]] = field(default_factory=dict)
    _missing: dict[str, float] = field(default_factory=dict)
    # When each item's hints were last forgotten (an admin write, returned units).
    _forgotten_at: dict[str, float] = field(default_factory=dict)
    # What GET /v1/items answers: sold and remaining, so cached for a moment only.
    _views: dict[str, tuple[Item, float]] = field(default_factory=dict)

    def item(self, item_id: str) -> Item | None:
        entry = self._items.get(item_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def remember_item(self, item: Item) -> None:
        _bound(self._items)
        self._items[item.item_id] = (item, time.monotonic() + self.item_ttl_s)

    def view(self, item_id: str) -> Item | None:
        entry = self._views.get(item_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def remember_view(self, item: Item) -> None:
        _bound(self._views)
        self._views[item.item_id] = (item, time.monotonic() + VIEW_TTL_S)

    def is_missing(self, item_id: str) -> bool:
        until = self._missing.get(item_id)
        return until is not None and until > time.monotonic()

    def remember_missing(self, item_id: str, read_at: float | None = None) -> None:
        """An unknown id, so a flood of them costs one Postgres query per id and TTL.

        `read_at`: when the read that found nothing began; forgotten since (the
        item was written meanwhile), its answer is stale and not remembered."""
        if read_at is not None and self._forgotten_at.get(item_id, -math.inf) >= read_at:
            return
        _bound(self._missing)
        self._missing[item_id] = time.monotonic() + self.item_ttl_s

    def forget(self, item_id: str) -> None:
        _bound(self._forgotten_at)
        self._forgotten_at[item_id] = time.monotonic()
        self._items.pop(item_id, None)
        self._missing.pop(item_id, None)
        self._views.pop(item_id, None)
        self._sold_out.pop(item_id, None)
        self._empty_shards.pop(item_id, None)

    def is_sold_out(self, item_id: str) -> bool:
        until = self._sold_out.get(item_id)
        return until is not None and until > time.monotonic()

    def mark_sold_out(self, item_id: str) -> None:
        self._sold_out[item_id] = time.monotonic() + self.sold_out_ttl_s

    def was_sold_out(self, item_id: str) -> bool:
        """Sold out until a moment ago: the hint expired, nothing cleared it."""
        return item_id in self._sold_out

    def forget_sold_out(self, item_id: str) -> None:
        self._sold_out.pop(item_id, None)

    def empty_shards(self, item_id: str) -> set[int]:
        entry = self._empty_shards.get(item_id)
        if entry is None or entry[1] < time.monotonic():
            return set()
        return entry[0]

    def mark_empty(self, item_id: str, shards: frozenset[int]) -> None:
        if shards:
            known = self.empty_shards(item_id) | shards
            self._empty_shards[item_id] = (known, time.monotonic() + self.sold_out_ttl_s)


def _bound(entries: dict[str, Any]) -> None:
    """Keep a cache from growing without end under a flood of distinct ids: the
    oldest half goes (dicts keep insertion order)."""
    if len(entries) >= MAX_ENTRIES:
        for key in list(entries)[: MAX_ENTRIES // 2]:
            del entries[key]
