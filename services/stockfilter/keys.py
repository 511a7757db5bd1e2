"""Every Redis key the project writes, in one place.

Shards of one item carry different hash tags ({item:n}) so a hot item spreads
over Redis Cluster slots; a shard's stock and its reservation records share a
tag, so one Lua call can touch both.
"""

from __future__ import annotations

PREFIX = "fs"


def stock_key(item_id: str, shard: int) -> str:
    return f"{PREFIX}:stock:{{{item_id}:{shard}}}"


def reservations_key(item_id: str, shard: int) -> str:
    return f"{PREFIX}:resv:{{{item_id}:{shard}}}"


def idempotency_key(purchase_id: str) -> str:
    return f"{PREFIX}:idem:{{{purchase_id}}}"


def limits_prefix() -> str:
    return f"{PREFIX}:limits"


def active_items_key() -> str:
    return f"{PREFIX}:{{active}}"


def swept_key() -> str:
    """Present once a reconciler visited every item since Redis last lost its data
    (same slot as the active set: losing one loses the other)."""
    return f"{PREFIX}:{{active}}:swept"


def sweeping_key() -> str:
    return f"{PREFIX}:{{active}}:sweeping"


def returns_channel() -> str:
    """Pub/sub channel: item ids whose units came back on sale (cancellations)."""
    return f"{PREFIX}:returned"


def incarnation_key(slot_tag: str | None = None) -> str:
    """The marker of what Redis holds (services/stockfilter/incarnation.py): one for
    a single node; on a cluster one per hash slot, `slot_tag` naming the slot of the
    records it vouches for (a node loses its slots' data, not the cluster's)."""
    if slot_tag is None:
        return f"{PREFIX}:incarnation"
    return f"{PREFIX}:incarnation:{{{slot_tag}}}"
