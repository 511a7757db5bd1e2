"""Real network partitions (infra/netlab.py): a consumer in its own network
namespace, cut off from the broker but not from Postgres, or the reverse, while
a sale runs. Nothing is oversold, applied twice or lost, and each cut is shown
to be real and selective from inside the consumer's namespace."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from infra.faults import FaultInjector
from infra.netlab import NetLab, NetLabUnavailable
from infra.stack import EmbeddedStack
from loadtests.checks.faultcheck import check_fault_run
from loadtests.sale.traffic import run_traffic
from services.resources import open_core
from services.store.leases import list_leases
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack, fault_settings

# Four session timeouts of fault_settings(): the group evicts the cut-off member
# and the survivor takes its partitions well within the cut.
CUT_S = 4 * fault_settings().session_timeout_s
# Buying before (2 s), during and 10 s after the cut.
TRAFFIC_S = 2 + CUT_S + 10


@pytest.fixture
def lab_stack() -> Iterator[FaultStack]:
    try:
        lab = NetLab.create()
    except NetLabUnavailable as exc:
        pytest.skip(f"no network lab on this machine: {exc}")
    root = Path(tempfile.mkdtemp(prefix="flashsale-netlab-"))
    root.chmod(0o755)
    stack = EmbeddedStack(root, fault_settings(), netlab=lab)
    try:
        stack.start_services()
        stack.start_processes(consumers=2)
        yield FaultStack(stack, FaultInjector(stack))
    finally:
        stack.stop()
        lab.destroy()
        shutil.rmtree(root, ignore_errors=True)


async def reaches(stack: EmbeddedStack, guest: str, service: str) -> bool:
    """A TCP connect from inside the guest's namespace, within a second."""
    return await asyncio.to_thread(_reaches, stack, guest, service)


def _reaches(stack: EmbeddedStack, guest: str, service: str) -> bool:
    assert stack.netlab is not None
    ports = {
        "broker": stack.broker.port,
        "postgres": stack.postgres.port,
        "redis": stack.redis.nodes[0].port,
    }
    probe = (
        "import socket,sys\n"
        f"socket.create_connection(({stack.netlab.address(service)!r}, {ports[service]}), 1)"
    )
    namespace = stack.netlab.guests[guest]
    result = subprocess.run(
        [*stack.netlab.exec_prefix(namespace), sys.executable, "-c", probe],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


async def owners(stack: EmbeddedStack) -> set[str | None]:
    async with open_core(stack.settings) as core:
        return {lease.owner for lease in await list_leases(core.pool, stack.settings.topic)}


async def _sale_with_cut(
    lab_stack: FaultStack, victim: str, service: str, during_cut: Callable[[], Awaitable[None]]
) -> None:
    stack = lab_stack.stack
    items = await lab_stack.create_items()
    traffic = asyncio.create_task(
        run_traffic(lab_stack.target, items, duration_s=TRAFFIC_S, rate_per_s=40, seed=5)
    )
    await asyncio.sleep(2)
    cut = asyncio.create_task(
        asyncio.to_thread(lab_stack.faults.partition_consumer, victim, service, CUT_S)
    )

    async def cut_off() -> bool:
        return not await reaches(stack, victim, service)

    await wait_for(cut_off, timeout_s=5, interval_s=0.2)
    other = "postgres" if service == "broker" else "broker"
    assert await reaches(stack, victim, other), f"the cut from {service} also cut {other}"
    await during_cut()
    await cut
    for healed in ("broker", "postgres", "redis"):
        assert await reaches(stack, victim, healed), f"after the heal, {healed} is out of reach"
    outcome = await traffic
    report = await check_fault_run(
        stack.settings.database_url, items, outcome.accepted, outcome.inconsistent_ids
    )
    assert outcome.accepted, outcome.statuses
    assert report.ok, report.all_violations


async def test_consumer_cut_off_from_the_broker_is_fenced_not_obeyed(
    lab_stack: FaultStack,
) -> None:
    """The zombie of the articles: out of the group, still able to write to the
    database. The survivor takes its partitions; the zombie's writes are fenced."""
    stack = lab_stack.stack
    victim, survivor = lab_stack.faults.consumer_names()

    async def survivor_takes_over() -> None:
        async def only_survivor() -> bool:
            return await owners(stack) == {survivor}

        await wait_for(only_survivor, timeout_s=CUT_S + 5, interval_s=0.5)

    await _sale_with_cut(lab_stack, victim, "broker", survivor_takes_over)


async def test_consumer_cut_off_from_postgres_loses_nothing(lab_stack: FaultStack) -> None:
    """The reverse: still in the group, unable to apply; its partitions wait or
    move, and every purchase is applied once after the network heals."""
    victim, _ = lab_stack.faults.consumer_names()

    async def nothing() -> None:
        return None

    await _sale_with_cut(lab_stack, victim, "postgres", nothing)


def test_a_new_lab_clears_what_a_dead_lab_left() -> None:
    """A chaos run killed mid-way leaves namespaces behind; the next lab that
    takes the same bridge index removes them instead of failing on them."""
    try:
        dead = NetLab.create()
    except NetLabUnavailable as exc:
        pytest.skip(f"no network lab on this machine: {exc}")
    left = dead.namespace_for("left-behind")
    subprocess.run(["ip", "link", "del", dead.bridge], check=True, timeout=10)
    fresh = NetLab.create()
    try:
        if fresh.index == dead.index:
            assert fresh.namespace_for("again") == left  # reused, not "File exists"
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        assert listed.count(left) <= (1 if fresh.index == dead.index else 0)
    finally:
        fresh.destroy()
        dead.destroy()


def test_guests_keep_their_reach_while_more_guests_join() -> None:
    """A bridge takes the lowest MAC of its ports unless it has its own: a guest
    that cached the old one lost Postgres and Redis when another consumer
    started (found by `flashsale chaos --duration 300 --seed 5`, 16 LATE)."""
    try:
        lab = NetLab.create()
    except NetLabUnavailable as exc:
        pytest.skip(f"no network lab on this machine: {exc}")
    server = socket.create_server((lab.address("postgres"), 0))
    port = server.getsockname()[1]
    try:
        first = lab.namespace_for("first")
        probe = f"import socket; socket.create_connection(({lab.address('postgres')!r}, {port}), 1)"
        for joined in range(8):
            lab.namespace_for(f"joined-{joined}")
            result = subprocess.run(
                [*lab.exec_prefix(first), sys.executable, "-c", probe],
                capture_output=True,
                timeout=10,
                check=False,
            )
            assert result.returncode == 0, f"lost after guest {joined} joined: {result.stderr!r}"
    finally:
        server.close()
        lab.destroy()
