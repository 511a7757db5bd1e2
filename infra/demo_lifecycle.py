"""The demo's lifecycle steps, as HTTP calls a shop would make: a window that opens,
cancellations and payments by the admin token (the shop's back office and its
payment system), units coming back, and waves of buyers who take them again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp

from loadtests.sale.admin import admin_headers
from loadtests.sale.sale import SaleOutcome, run_sale
from loadtests.sale.target import Target
from services.tokens import issue_token

TIMEOUT = aiohttp.ClientTimeout(total=30)
POLL_S = 0.2
# Buyers per resale wave per unit back on sale, and waves at most: a wave that
# comes before the filter got the units back finds them sold out and the next
# one takes them.
RESALE_DEMAND = 3
RESALE_MIN_BUYERS = 30
RESALE_WAVES = 5


@dataclass
class Answers:
    """Answers to a series of admin calls: 'HTTP status error-or-status' -> count."""

    counts: Counter[str] = field(default_factory=Counter)
    done: list[str] = field(default_factory=list)

    def line(self) -> str:
        return ", ".join(f"{n} x {label}" for label, n in sorted(self.counts.items()))


@dataclass
class Resale:
    outcome: SaleOutcome = field(default_factory=SaleOutcome)
    # Units confirmed in each wave: the first may come before every unit is back.
    confirmed: list[int] = field(default_factory=list)
    buyers: int = 0
    remaining: int = -1


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def opening_in(seconds: int) -> datetime:
    """A whole second `seconds` or a bit more ahead: RFC 3339 here has no fractions."""
    now = datetime.now(UTC).replace(microsecond=0)
    return now + timedelta(seconds=seconds + 1)


async def early_buyers(target: Target, item_id: str, count: int) -> list[tuple[int, str, str]]:
    """Buyers who come before starts_at: (status, error, Retry-After) of each."""
    answers = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for n in range(count):
            token = issue_token(target.secret, f"early-{uuid.uuid4().hex[:8]}-{n}", 3600)
            async with http.post(
                f"{target.gateway_url}/v1/purchases",
                json={"item_id": item_id, "quantity": 1},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
            ) as response:
                body = await response.json()
                answers.append(
                    (
                        response.status,
                        str(body.get("error", body.get("status", ""))),
                        response.headers.get("Retry-After", "-"),
                    )
                )
    return answers


async def wait_until(moment: datetime) -> None:
    left = (moment - datetime.now(UTC)).total_seconds()
    if left > 0:
        await asyncio.sleep(left)


async def admin_calls(target: Target, purchase_ids: Iterable[str], action: str) -> Answers:
    """POST /v1/purchases/{id}/cancel or /pay with the admin token, one by one."""
    answers = Answers()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for purchase_id in purchase_ids:
            async with http.post(
                f"{target.gateway_url}/v1/purchases/{purchase_id}/{action}",
                headers=admin_headers(target),
            ) as response:
                body = await response.json()
            label = str(body.get("error") or body.get("status"))
            answers.counts[f"{response.status} {label}"] += 1
            if response.status == 200:
                answers.done.append(purchase_id)
    return answers


async def remaining(target: Target, item_id: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(f"{target.gateway_url}/v1/items/{item_id}") as response,
    ):
        body = await response.json()
    return int(body["remaining"])


async def wait_for_remaining(
    target: Target, item_id: str, units: int, timeout_s: float
) -> tuple[int, float]:
    """Poll the item until `units` are back on sale (or the time is up): the units
    seen, and how long it took."""
    started = time.monotonic()
    seen = await remaining(target, item_id)
    while seen < units and time.monotonic() - started < timeout_s:
        await asyncio.sleep(POLL_S)
        seen = await remaining(target, item_id)
    return seen, time.monotonic() - started


async def resell(target: Target, item_id: str, units_back: int) -> Resale:
    """Waves of new buyers until the item is sold out again (a bounded number)."""
    resale = Resale(remaining=units_back)
    while resale.remaining > 0 and len(resale.confirmed) < RESALE_WAVES:
        buyers = max(RESALE_DEMAND * resale.remaining, RESALE_MIN_BUYERS)
        wave = await run_sale(target, item_id, buyers)
        resale.confirmed.append(sum(1 for s in wave.final_by_id.values() if s == "confirmed"))
        resale.buyers += buyers
        resale.outcome.accepted += wave.accepted
        resale.outcome.final.update(wave.final)
        resale.outcome.final_by_id.update(wave.final_by_id)
        resale.remaining = await remaining(target, item_id)
    return resale
