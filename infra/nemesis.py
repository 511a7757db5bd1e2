"""The nemesis of `flashsale chaos`: a seeded schedule of faults, run one at a time.

Each fault is written to the history as a window (first effect .. repair, and
the heal bound after it), so the checker knows the clean stretches.

Faults that lose data (broker, Redis, the whole stack) first wait until every
purchase accepted so far is final: the broker's log and Redis' reservation
records each hold a copy of an unapplied purchase, and losing both before one is
replayed is outside the guarantee (design.md), so the schedule never does it.
A whole-stack restart stops the gateways first, for the same reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from infra.faults import FAULTS, NETWORK_FAULTS, FaultInjector
from infra.netlab import SLOW_RATE
from loadtests.chaos.history import FaultWindow, HistoryWriter
from services.errors import FlashsaleError

# A pause longer than the session timeout, so the partitions really move.
SESSION_TIMEOUT_S = 6.0
PAUSE_S = 9.0
POSTGRES_DOWN_S = 2.0
FIRST_FAULT_S = 2.0
QUIET_TAIL_S = 3.0
MEAN_GAP_S = 6.0
HEAL_BOUND_S = 30.0
MAX_CONSUMERS = 5
MIN_CONSUMERS = 1
CONSUMER_FAULTS = frozenset(
    {"kill_consumer", "pause_consumer", "remove_consumer"} | set(NETWORK_FAULTS)
)
DATA_LOSING = frozenset({"restart_broker", "restart_redis", "restart_stack"})
# A whole-stack restart takes long; it comes up less often than the others.
WEIGHTS = {fault: 1.0 for fault in FAULTS} | {"restart_stack": 0.5}

Heal = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FaultEvent:
    at_s: float
    fault: str

    def describe(self) -> str:
        return f"t+{self.at_s:5.1f}s  {self.fault}"


def schedule(seed: int, duration_s: float, kinds: Sequence[str] = FAULTS) -> list[FaultEvent]:
    """The same seed, duration and kinds always give the same schedule."""
    rng = random.Random(seed)
    chosen = [kind for kind in FAULTS if kind in kinds]
    weights = [WEIGHTS[kind] for kind in chosen]
    events = []
    at = FIRST_FAULT_S + rng.uniform(0, MEAN_GAP_S / 2)
    while chosen and at < duration_s - QUIET_TAIL_S:
        events.append(FaultEvent(round(at, 1), rng.choices(chosen, weights)[0]))
        at += rng.uniform(MEAN_GAP_S / 2, MEAN_GAP_S * 1.5)
    return events


class Nemesis:
    def __init__(
        self,
        faults: FaultInjector,
        writer: HistoryWriter,
        heal: Heal,
        say: Callable[[str], None],
        seed: int,
    ) -> None:
        self.faults = faults
        self.writer = writer
        self.heal = heal
        self.say = say
        # Targets (which consumer, which gateway) come from their own seeded stream.
        self.rng = random.Random(seed + 1)

    async def run(self, events: list[FaultEvent]) -> None:
        started = time.monotonic()
        for index, event in enumerate(events):
            delay = event.at_s - (time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            await self._one(index, event, started)

    async def _one(self, index: int, event: FaultEvent, started: float) -> None:
        if event.fault in DATA_LOSING:
            await self.heal()
        begin, begin_rel = time.time(), time.monotonic() - started
        try:
            target = await self._inject(event.fault)
        except (FlashsaleError, OSError, LookupError) as exc:
            # A fault that could not be put in place is still a window: it may
            # have half-happened (a process killed, its replacement not started).
            target = f"FAILED: {type(exc).__name__}: {exc}"
        end, end_rel = time.time(), time.monotonic() - started
        self.writer.fault(FaultWindow(index, event.fault, target, begin, end, end + HEAL_BOUND_S))
        self.say(
            f"[yellow]fault[/yellow] t+{begin_rel:5.1f}s..{end_rel:5.1f}s {event.fault}: {target}"
        )

    async def _inject(self, fault: str) -> str:
        if fault == "restart_stack":
            await asyncio.to_thread(self.faults.stop_gateways)
            await self.heal()
            await asyncio.to_thread(self.faults.restart_stack)
            return "gateways stopped, drained; down and up, postgres data kept"
        return await asyncio.to_thread(self._inject_blocking, fault)

    def _inject_blocking(self, fault: str) -> str:
        """Run one fault (blocking); what was done, for the log and the history."""
        consumers = sorted(self.faults.consumer_names())
        if fault == "add_consumer" and len(consumers) >= MAX_CONSUMERS:
            fault = "remove_consumer"
        if fault == "remove_consumer" and len(consumers) <= MIN_CONSUMERS:
            fault = "add_consumer"
        if fault in CONSUMER_FAULTS:
            return self._consumer_fault(fault, self.rng.choice(consumers))
        if fault in ("kill_gateway", "pause_gateway"):
            return self._gateway_fault(fault, self.rng.randrange(self.faults.gateway_count()))
        if fault == "add_consumer":
            return f"started {self.faults.add_consumer()}"
        if fault == "restart_postgres":
            self.faults.restart_postgres(POSTGRES_DOWN_S)
            return f"postgres down {POSTGRES_DOWN_S:.0f}s"
        getattr(self.faults, fault)()
        return fault.replace("_", " ")

    def _consumer_fault(self, fault: str, name: str) -> str:
        if fault == "kill_consumer":
            return f"kill -9 {name}, started {self.faults.kill_consumer(name)}"
        if fault == "remove_consumer":
            self.faults.remove_consumer(name)
            return f"scaled down: stopped {name}"
        if fault == "partition_consumer_broker":
            self.faults.partition_consumer(name, "broker", PAUSE_S)
            return f"cut {name} off from the broker (not Postgres) for {PAUSE_S:.0f}s"
        if fault == "partition_consumer_postgres":
            self.faults.partition_consumer(name, "postgres", PAUSE_S)
            return f"cut {name} off from Postgres (not the broker) for {PAUSE_S:.0f}s"
        if fault == "slow_consumer":
            self.faults.slow_consumer(name, PAUSE_S)
            return f"squeezed {name}'s link to {SLOW_RATE} for {PAUSE_S:.0f}s"
        self.faults.pause_consumer(name, PAUSE_S)
        return f"SIGSTOP {name} for {PAUSE_S:.0f}s, then SIGCONT"

    def _gateway_fault(self, fault: str, index: int) -> str:
        if fault == "kill_gateway":
            return f"kill -9 gateway {index}, started pid {self.faults.kill_gateway(index)}"
        self.faults.pause_gateway(index, PAUSE_S)
        return f"SIGSTOP gateway {index} for {PAUSE_S:.0f}s, then SIGCONT"
