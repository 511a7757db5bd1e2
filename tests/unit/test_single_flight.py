"""One build at a time (gateway/singleflight.py), whatever the concurrency."""

from __future__ import annotations

import asyncio

from gateway.singleflight import CachedView, SingleFlight


class Build:
    """A build that waits until released, counting how many ran and at most at once."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.most_at_once = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.started += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            return self.started
        finally:
            self.running -= 1


async def test_concurrent_callers_share_one_build() -> None:
    build = Build()
    view = CachedView(build, max_age_s=60.0)
    callers = [asyncio.ensure_future(view.get()) for _ in range(300)]
    await asyncio.sleep(0)
    build.release.set()
    assert set(await asyncio.gather(*callers)) == {1}
    assert build.started == 1 and build.most_at_once == 1
    assert await view.get() == 1  # fresh: no build at all


async def test_a_stale_view_is_rebuilt_once() -> None:
    build = Build()
    build.release.set()
    view = CachedView(build, max_age_s=0.0)
    assert await view.get() == 1
    assert await asyncio.gather(*(view.get() for _ in range(50))) == [2] * 50
    assert build.most_at_once == 1


async def test_a_caller_that_goes_away_does_not_cancel_the_others_build() -> None:
    build = Build()
    flight: SingleFlight[str, int] = SingleFlight()
    first = asyncio.ensure_future(flight.run("k", build))
    second = asyncio.ensure_future(flight.run("k", build))
    await asyncio.sleep(0)
    first.cancel()
    build.release.set()
    assert await second == 1
    assert build.started == 1 and flight.running == 0


async def test_a_failed_build_fails_its_callers_and_the_next_call_builds_again() -> None:
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("postgres is down")
        return calls

    view = CachedView(failing, max_age_s=60.0)
    results = await asyncio.gather(view.get(), view.get(), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await view.get() == 2


async def test_keys_build_side_by_side() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def echo(text: str) -> str:
        await asyncio.sleep(0)
        return text

    assert await asyncio.gather(
        flight.run("a", lambda: echo("a")), flight.run("b", lambda: echo("b"))
    ) == ["a", "b"]
