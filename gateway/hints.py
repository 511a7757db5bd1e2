"""In-process caches of one gateway: item metadata, sold-out items, empty shards.

They only save Redis and Postgres calls; a stale hint costs a wrong fast answer
for at most its time to live, never a wrong sale (Postgres decides).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.store.items import Item


@dataclass
class ItemHints:
    item_ttl_s: float
    sold_out_ttl_s: float
    _items: dict[str, tuple[Item, float]] = field(default_factory=dict)
    _sold_out: dict[str, float] = field(default_factory=dict)
    _empty_shards: dict[str, tuple[set[int], float]] = field(default_factory=dict)

    def item(self, item_id: str) -> Item | None:
        entry = self._items.get(item_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def remember_item(self, item: Item) -> None:
        self._items[item.item_id] = (item, time.monotonic() + self.item_ttl_s)

    def forget(self, item_id: str) -> None:
        self._items.pop(item_id, None)
        self._sold_out.pop(item_id, None)
        self._empty_shards.pop(item_id, None)

    def is_sold_out(self, item_id: str) -> bool:
        until = self._sold_out.get(item_id)
        return until is not None and until > time.monotonic()

    def mark_sold_out(self, item_id: str) -> None:
        self._sold_out[item_id] = time.monotonic() + self.sold_out_ttl_s

    def empty_shards(self, item_id: str) -> set[int]:
        entry = self._empty_shards.get(item_id)
        if entry is None or entry[1] < time.monotonic():
            return set()
        return entry[0]

    def mark_empty(self, item_id: str, shards: frozenset[int]) -> None:
        if shards:
            known = self.empty_shards(item_id) | shards
            self._empty_shards[item_id] = (known, time.monotonic() + self.sold_out_ttl_s)
