"""`flashsale loadtest`: put items on sale, run a Locust scenario headless, check the invariants.

Locust runs as a child process (it monkey-patches the interpreter with gevent,
which must not meet flashsale's asyncio code); the scenario parameters reach it
through environment variables, and it hands back two files: Locust's JSON
report (timings) and the scenario's results file (accepted purchase ids,
answers by status, the purchase ids each idempotency key was answered with).
With several Locust processes, each worker hands back its own two and they are
merged before the check.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from loadtests.checks.invariants import InvariantReport, ItemTally
from loadtests.checks.salecheck import SaleExpectations, check_sale
from loadtests.loadtest.locust_process import (
    LoadtestError,
    Progress,
    RunFiles,
    read_outputs,
    run_locust,
)
from loadtests.loadtest.locust_stats import EndpointStats, merge, percentile_ms
from loadtests.loadtest.plans import plan_items
from loadtests.sale.admin import ItemNotCreatedError, create_item
from loadtests.sale.target import EventsAccess, FilterAccess, Target
from loadtests.scenarios.params import ItemSpec, ScenarioParams
from loadtests.scenarios.results import NO_ANSWER, ScenarioResults

__all__ = [
    "LoadtestError",  # raised here and by the Locust child (loadtest.locust_process)
    "LoadtestSummary",
    "answer_violations",
    "expectations",
    "judge",
    "put_items",
    "run_loadtest",
]

# design.md invariant 3: every 202 is final within 30 s.
FINAL_BOUND_S = 30.0
ADMIN_TIMEOUT_S = 10.0
# Scenarios whose locustfile pays holds as the payment system (admin token).
PAYING_SCENARIOS = ("cancellations",)
# The admission latency of a sale is what the POST answers measure; the long
# polls of GET ?wait= hold answers on purpose and would drown it.
BUY_PREFIX = "POST /v1/purchases"


@dataclass
class LoadtestSummary:
    scenario: str
    users: int
    duration_s: int
    processes: int
    run_id: str
    folder: Path
    items: list[ItemSpec]
    endpoints: list[EndpointStats]
    results: ScenarioResults
    tallies: list[ItemTally]
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def requests(self) -> int:
        return sum(entry.requests for entry in self.endpoints)

    @property
    def stock(self) -> int:
        return sum(item.stock for item in self.items)

    @property
    def confirmed_units(self) -> int:
        return sum(tally.confirmed_units for tally in self.tallies)

    @property
    def rejected(self) -> int:
        return sum(tally.rejected for tally in self.tallies)

    def moved_on(self, status: str) -> int:
        """Purchases that became cancelled, paid or expired after confirmed."""
        return sum(getattr(tally, status) for tally in self.tallies)

    @property
    def returned_units(self) -> int:
        return sum(tally.returned_units for tally in self.tallies)

    @property
    def requests_per_s(self) -> float:
        """Over the run time; the few seconds users get to finish are left out."""
        return self.requests / self.duration_s

    @property
    def unanswered(self) -> int:
        """Requests that got no HTTP answer: a client timeout or a connection error."""
        return sum(
            count
            for counts in self.results.answers.values()
            for label, count in counts.items()
            if label in NO_ANSWER
        )

    def buy_latency_ms(self, fraction: float) -> float:
        buys = [entry for entry in self.endpoints if entry.name.startswith(BUY_PREFIX)]
        return percentile_ms(merge(buys), fraction)

    def as_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "users": self.users,
            "duration_s": self.duration_s,
            "processes": self.processes,
            "run_id": self.run_id,
            "folder": str(self.folder),
            "requests": self.requests,
            "requests_per_s": round(self.requests_per_s, 1),
            "buyers": self.results.buyers,
            "answers": self.results.answers,
            "unanswered": self.unanswered,
            "accepted": len(set(self.results.accepted)),
            "finals_polled": self.results.finals,
            "stock": self.stock,
            "confirmed_units": self.confirmed_units,
            "rejected": self.rejected,
            "cancelled": self.moved_on("cancelled"),
            "paid": self.moved_on("paid"),
            "expired": self.moved_on("expired"),
            "returned_units": self.returned_units,
            "buy_p50_ms": self.buy_latency_ms(0.50),
            "buy_p99_ms": self.buy_latency_ms(0.99),
            "violations": self.violations,
            "ok": self.ok,
        }


def run_loadtest(
    target: Target,
    scenario: str,
    users: int,
    duration_s: int,
    runs_dir: Path,
    progress: Progress,
    processes: int = 1,
) -> LoadtestSummary:
    """`processes` Locust processes share the users (a worker without one would add nothing)."""
    processes = min(processes, users)
    run_id = secrets.token_hex(3)
    items = plan_items(scenario, run_id)
    # Absolute: Locust runs with the run folder as its working directory, so a
    # relative path (the default `.flashsale`) would point inside itself.
    folder = runs_dir.resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario}-{run_id}"
    files = RunFiles(folder, processes)
    files.folder.mkdir(parents=True, exist_ok=True)
    progress.phase(f"putting {len(items)} item(s) on sale")
    put_items(target, items)
    params = ScenarioParams(
        target.gateway_url,
        target.secret,
        run_id,
        items,
        str(files.results),
        # The payment system's token, only to the scenario that pays holds.
        admin_token=target.admin_token if scenario in PAYING_SCENARIOS else "",
        stats_path=str(files.stats_json),
    )
    run_locust(scenario, params, users, duration_s, files, progress)
    endpoints, results = read_outputs(files)
    progress.phase(
        f"waiting (at most {FINAL_BOUND_S:.0f} s) for {len(set(results.accepted))} accepted "
        "purchases to be final, then checking the invariants"
    )
    expected = expectations(scenario, params, results, target.stock_filter, target.events)
    report = judge(target.database_url, results, expected)
    return LoadtestSummary(
        scenario=scenario,
        users=users,
        duration_s=duration_s,
        processes=processes,
        run_id=run_id,
        folder=files.folder,
        items=list(items),
        endpoints=endpoints,
        results=results,
        tallies=report.items,
        violations=[*report.violations, *answer_violations(results)],
    )


def put_items(target: Target, items: Sequence[ItemSpec]) -> None:
    asyncio.run(_put_items(target, items))


async def _put_items(target: Target, items: Sequence[ItemSpec]) -> None:
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for item in items:
            try:
                terms = {} if item.hold_s is None else {"hold_s": item.hold_s}
                await create_item(
                    session, target, item.item_id, item.stock, item.per_user_limit, **terms
                )
            except (aiohttp.ClientError, TimeoutError, ItemNotCreatedError) as exc:
                raise LoadtestError(f"the gateway did not create item {item.item_id}") from exc


def expectations(
    scenario: str,
    params: ScenarioParams,
    results: ScenarioResults,
    stock_filter: FilterAccess | None = None,
    events: EventsAccess | None = None,
) -> SaleExpectations:
    keys = {(k.user_id, k.key): k.purchase_ids for k in results.keys}
    stock = {i.item_id: i.stock for i in params.items}
    if scenario != "abusive":
        return SaleExpectations(stock=stock, keys=keys, stock_filter=stock_filter, events=events)
    return SaleExpectations(
        stock=stock,
        keys=keys,
        untouched_user_prefixes=(params.user_prefix("x"),),
        untouched_items=tuple(i.item_id for i in params.items if i.weight == 0),
        stock_filter=stock_filter,
        events=events,
    )


def judge(
    database_url: str, results: ScenarioResults, expected: SaleExpectations
) -> InvariantReport:
    try:
        return asyncio.run(check_sale(database_url, results.accepted, expected, FINAL_BOUND_S))
    except (OSError, asyncpg.PostgresError) as exc:
        raise LoadtestError("could not read Postgres to check the invariants") from exc


def answer_violations(results: ScenarioResults) -> list[str]:
    """Answers a scenario forbids (counted in the locustfile), as violations."""
    if not results.broken_rules:
        return []
    counts = ", ".join(f"{rule}: {n}" for rule, n in sorted(results.broken_rules.items()))
    lines = [f"ANSWER: {sum(results.broken_rules.values())} answers broke a rule ({counts})"]
    lines.extend(f"  e.g. {example}" for example in results.examples[:5])
    return lines
