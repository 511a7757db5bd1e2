"""The refusals of an admission that need no Redis, Kafka or Postgres: the
answers api.md gives, and the checks against a cached item."""

from __future__ import annotations

import math

from gateway.errors import ApiError
from services.errors import UnavailableError
from services.store.items import Item, rfc3339


class SoldOut(ApiError):
    def __init__(self, item_id: str) -> None:
        super().__init__(409, "sold_out", f"item {item_id} is sold out")


class FilterRebuilding(UnavailableError):
    """A 503: a shard of the item's stock filter is missing (Redis lost it) and the
    reconciler is rebuilding it. Like a refusal, answered only after Postgres was
    asked whether it holds the key's purchase (a retry after Redis lost its data)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"stock filter of {item_id} is being rebuilt")


def in_progress() -> ApiError:
    return ApiError(
        409, "in_progress", "the same request is still being admitted", {"Retry-After": "1"}
    )


def check_same_request(
    earlier_item: str, earlier_quantity: int, item_id: str, quantity: int
) -> None:
    if (earlier_item, earlier_quantity) != (item_id, quantity):
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )


def check_quantity(item: Item, quantity: int) -> None:
    if quantity > item.per_user_limit:
        raise ApiError(
            422,
            "quantity_above_limit",
            f"quantity may be at most {item.per_user_limit} for {item.item_id}",
        )


def check_window(item: Item, now_s: float) -> None:
    """Before the start or after the end, from the cached item: no Kafka, no Postgres."""
    starts_at, ends_at = item.terms.starts_at, item.terms.ends_at
    if starts_at is not None and now_s < starts_at.timestamp():
        wait_s = max(1, math.ceil(starts_at.timestamp() - now_s))
        raise ApiError(
            409,
            "not_started",
            f"the sale of {item.item_id} starts at {rfc3339(starts_at)}",
            {"Retry-After": str(wait_s)},
        )
    if ends_at is not None and now_s >= ends_at.timestamp():
        raise ApiError(409, "sale_ended", f"the sale of {item.item_id} ended at {rfc3339(ends_at)}")
