"""What each scenario puts on sale, and how many Locust users it runs by default."""

from __future__ import annotations

from loadtests.scenarios.params import ItemSpec

SALE_STOCK = 100
# A retry storm needs many acceptances to test key handling on, not only 100.
RETRY_STORM_STOCK = 100
HAMMERED_STOCK = 1000
MULTI_ITEM_COUNT = 50
# Popularity of the n-th item (n from 1) is proportional to 1 / n**ZIPF_EXPONENT.
ZIPF_EXPONENT = 1.1
MULTI_ITEM_STOCKS = (10, 100, 40, 500, 5, 2000, 60, 250)
MULTI_ITEM_LIMITS = (1, 2, 1, 3, 1)
# Small stocks: both items sell out early, so every unit a cancel or an expiry
# brings back is fought over and must be sold again.
CANCEL_STOCK = 40
HOLD_STOCK = 40
# Short holds: many expire and are sold again within a run of a few seconds.
HOLD_S = 2

DEFAULT_USERS = {
    "spike": 500,
    "retry-storm": 200,
    "multi-item": 300,
    "abusive": 200,
    "cancellations": 200,
}
DEFAULT_DURATION_S = 20


def item_prefix(run_id: str) -> str:
    return f"lt-{run_id}-item-"


def plan_items(scenario: str, run_id: str) -> tuple[ItemSpec, ...]:
    prefix = item_prefix(run_id)
    if scenario == "spike":
        return (ItemSpec(f"{prefix}spike", SALE_STOCK, 1),)
    if scenario == "retry-storm":
        return (ItemSpec(f"{prefix}storm", RETRY_STORM_STOCK, 1),)
    if scenario == "multi-item":
        return tuple(
            ItemSpec(
                f"{prefix}{rank:02d}",
                MULTI_ITEM_STOCKS[rank % len(MULTI_ITEM_STOCKS)],
                MULTI_ITEM_LIMITS[rank % len(MULTI_ITEM_LIMITS)],
                weight=1.0 / rank**ZIPF_EXPONENT,
            )
            for rank in range(1, MULTI_ITEM_COUNT + 1)
        )
    if scenario == "abusive":
        # Honest buyers storm the first item. The hammering user gets an item of its
        # own that never sells out, because a sold-out item is answered before any
        # rate limit is consulted. Only bad input targets the decoy: it must stay untouched.
        return (
            ItemSpec(f"{prefix}sale", SALE_STOCK, 1),
            ItemSpec(f"{prefix}hammered", HAMMERED_STOCK, 1),
            ItemSpec(f"{prefix}decoy", SALE_STOCK, 1, weight=0.0),
        )
    if scenario == "cancellations":
        return (
            ItemSpec(f"{prefix}cancel", CANCEL_STOCK, 1),
            ItemSpec(f"{prefix}hold", HOLD_STOCK, 1, hold_s=HOLD_S),
        )
    raise ValueError(f"unknown scenario {scenario!r}")
