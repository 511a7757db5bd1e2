"""Where a running stack answers, as every load driver and checker sees it.

One type for the Locust scenarios, the fault traffic, the chaos workload, the
demo's sale and the bench. The `flashsale` command builds a local stack's target
from its stack file (infra.stackfile `StackFile.target`); a deployed stack
(`flashsale sale`) has none and names its gateway.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FilterAccess:
    """Where the stock filter lives, to read it after a run."""

    redis_url: str
    redis_cluster: bool
    shards: int


@dataclass(frozen=True, slots=True)
class EventsAccess:
    """Where the relay publishes events, to read them back after a run."""

    bootstrap: str
    topic: str


@dataclass(frozen=True, slots=True)
class Target:
    gateway_url: str
    admin_token: str
    secret: str
    database_url: str = ""
    # Given, the checks look for returned units in the stock filter and read
    # the published events back from the topic.
    stock_filter: FilterAccess | None = None
    events: EventsAccess | None = None

    @property
    def redis_url(self) -> str:
        """The stack's Redis (the bench's lock baselines share it)."""
        return "" if self.stock_filter is None else self.stock_filter.redis_url
