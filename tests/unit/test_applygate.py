"""The gate between a consumer's batches and its reconciler's drift read."""

from __future__ import annotations

import asyncio

from services.applygate import ApplyGate

# No I/O runs here: a few turns of the event loop let every ready task go as far
# as it can (the gate is pure asyncio), which is what each check waits for.
LOOP_TURNS = 10


async def let_ready_tasks_run() -> None:
    for _ in range(LOOP_TURNS):
        await asyncio.sleep(0)


async def test_batches_apply_side_by_side_and_the_read_waits_for_them() -> None:
    gate = ApplyGate()
    order: list[str] = []
    release = asyncio.Event()

    async def batch(name: str) -> None:
        async with gate.applying():
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    async def read() -> None:
        async with gate.exclusive():
            order.append("read")

    batches = [asyncio.create_task(batch(n)) for n in ("a", "b")]
    await let_ready_tasks_run()
    assert order == ["a in", "b in"]  # both batches inside at once
    reader = asyncio.create_task(read())
    await let_ready_tasks_run()
    assert "read" not in order  # a batch is between commit and settle
    release.set()
    await asyncio.gather(*batches, reader)
    assert order[-1] == "read" and order[:2] == ["a in", "b in"]


async def test_a_waiting_read_goes_before_new_batches() -> None:
    """Batches arrive without pause under a crowd: a read that waited for a quiet
    moment would never get one."""
    gate = ApplyGate()
    order: list[str] = []
    first_done = asyncio.Event()

    async def batch(name: str, until: asyncio.Event | None = None) -> None:
        async with gate.applying():
            order.append(name)
            if until is not None:
                await until.wait()

    async def read() -> None:
        async with gate.exclusive():
            order.append("read")

    first = asyncio.create_task(batch("first", first_done))
    await let_ready_tasks_run()
    reader = asyncio.create_task(read())
    await let_ready_tasks_run()
    later = asyncio.create_task(batch("later"))
    await let_ready_tasks_run()
    assert order == ["first"]  # the later batch waits behind the read
    first_done.set()
    await asyncio.gather(first, reader, later)
    assert order == ["first", "read", "later"]
    assert gate.exclusive_s >= 0


async def test_a_cancelled_read_lets_the_batches_behind_it_through() -> None:
    gate = ApplyGate()
    release = asyncio.Event()
    second_in = asyncio.Event()

    async def first() -> None:
        async with gate.applying():
            await release.wait()

    async def second() -> None:
        async with gate.applying():
            second_in.set()

    holding = asyncio.create_task(first())
    await let_ready_tasks_run()
    reader = asyncio.create_task(gate.exclusive().__aenter__())
    await let_ready_tasks_run()
    waiting = asyncio.create_task(second())  # behind the waiting read
    await let_ready_tasks_run()
    assert not second_in.is_set()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await asyncio.wait_for(second_in.wait(), timeout=5)
    release.set()
    await asyncio.gather(holding, waiting)
