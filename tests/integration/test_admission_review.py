"""Regression tests for the admission and reconciler holes of the issue-9 review.

Admission runs in-process here against the real Redis, Postgres and broker of the
session, so a test can stop it between two steps the way a crash would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from limits import parse

from gateway import itemreads as itemreads_module
from gateway import routes
from gateway.admission import Admission, Admitted, SoldOut
from gateway.errors import ApiError
from gateway.hints import ItemHints
from gateway.lookups import PurchaseFinder
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import open_rate_limits
from services.errors import UnavailableError
from services.producer import open_producer
from services.reconciler import Reconciler, apply_item_write, read_views
from services.resources import CoreResources
from services.schema import PurchaseMessage, purchase_id_for
from services.settings import Settings
from services.stockfilter.activity import ActiveItems
from services.stockfilter.filter import Settlement
from services.stockfilter.idempotency import new_claim
from services.stockfilter.keys import active_items_key, idempotency_key, stock_key, swept_key
from services.store.items import write_item
from services.store.lookup import PurchaseLookup
from services.store.notifications import ResultWaiters, TooManyWaitsError
from tests.conftest import fresh_id, wait_for


class Crash(Exception):
    """Raised where the admitting process dies, leaving what it wrote behind."""


@pytest.fixture
async def admission(settings: Settings, core: CoreResources) -> AsyncIterator[Admission]:
    # A topic no consumer reads: what these tests publish must not be applied later,
    # in the middle of another test's snapshot of Postgres.
    relaxed = settings.replace(
        user_rate="1000/second",
        reservation_stale_s=0.0,
        topic=f"admission-review-{secrets.token_hex(3)}",
    )
    limits = open_rate_limits(relaxed)
    lookup = PurchaseLookup(core.pool)
    try:
        async with open_producer(relaxed) as producer:
            hints = ItemHints(relaxed.item_cache_s, relaxed.sold_out_cache_s)
            gate = Admission(core, producer, hints, GatewayMetrics(), limits, lookup)
            gate.settings = relaxed
            yield gate
    finally:
        await lookup.close()
        await limits.close()


async def new_item(core: CoreResources, stock: int, per_user_limit: int = 1) -> str:
    item_id = fresh_id()
    written = await write_item(core.pool, item_id, stock, per_user_limit)
    await apply_item_write(core, written)
    return item_id


async def set_levels(core: CoreResources, item_id: str, levels: list[int]) -> None:
    for shard, units in enumerate(levels):
        await core.redis.set(stock_key(item_id, shard), units)


async def filter_units(core: CoreResources, item_id: str) -> int:
    return sum(shard.units or 0 for shard in await core.stock.snapshot(item_id))


async def crash_after_reserve(gate: Admission, user: str, key: str, item_id: str) -> None:
    real_publish = gate._publish

    async def die(*_args: Any) -> None:
        raise Crash

    gate._publish = die  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            await gate.purchase(user, key, item_id, 1, "127.0.0.1")
    finally:
        gate._publish = real_publish  # type: ignore[method-assign]


async def test_taking_over_a_dead_admission_reserves_no_second_unit(
    admission: Admission, core: CoreResources
) -> None:
    """Finding 2: the takeover used to start at a random shard and miss the first
    reservation; now the claim names the shard before it is tried."""
    item_id = await new_item(core, 400)
    for n in range(8):
        user, key = f"u{n}", secrets.token_hex(4)
        await crash_after_reserve(admission, user, key, item_id)
        retried = await admission.purchase(user, key, item_id, 1, "127.0.0.1")
        assert isinstance(retried, Admitted)
    assert await filter_units(core, item_id) == 400 - 8


async def test_takeover_finds_a_reservation_made_off_the_home_shard(
    admission: Admission, core: CoreResources
) -> None:
    item_id = await new_item(core, 40)
    user, key = "mover", secrets.token_hex(4)
    home = core.stock.home_shard(purchase_id_for(admission.settings.secret, user, key))
    await set_levels(core, item_id, [0 if s == home else 10 for s in range(core.stock.shards)])
    await crash_after_reserve(admission, user, key, item_id)
    await admission.purchase(user, key, item_id, 1, "127.0.0.1")
    assert await filter_units(core, item_id) == 29


async def test_a_retry_redis_forgot_gets_its_purchase_not_sold_out(
    admission: Admission, core: CoreResources
) -> None:
    """Finding 4: after Redis lost the idempotency record of a purchase Postgres
    holds, a retry on a sold-out item used to answer 409 sold_out."""
    item_id = await new_item(core, 1)
    user, key = "keeper", secrets.token_hex(4)
    first = await admission.purchase(user, key, item_id, 1, "127.0.0.1")
    message = PurchaseMessage(first.purchase_id, user, key, item_id, 1, 0, 0)
    await apply_one(core, message)
    await core.redis.delete(idempotency_key(first.purchase_id))
    admission.hints.mark_sold_out(item_id)
    again = await admission.purchase(user, key, item_id, 1, "127.0.0.1")
    assert again == Admitted(first.purchase_id, replayed=True)
    with pytest.raises(SoldOut):
        await admission.purchase("someone-else", key, item_id, 1, "127.0.0.1")


async def test_a_twin_still_admitting_on_a_sold_out_item_gets_no_202(
    admission: Admission, core: CoreResources
) -> None:
    """Found by `flashsale loadtest retry-storm` (docs/loadtests.md): once the item
    was cached as sold out, the record of a twin still mid-admission (claimed, not
    published) was replayed as 202, and the twin then found no unit: a 202 for a
    purchase that never happened. A claimed record now goes through admission,
    which waits for the twin (here: takes it over, stale at once) and answers what
    the twin would: sold out."""
    item_id = await new_item(core, 1)
    await set_levels(core, item_id, [0] * core.stock.shards)  # the last unit went to another
    user, key = "twin", secrets.token_hex(4)
    purchase_id = purchase_id_for(admission.settings.secret, user, key)
    twin = new_claim(user, item_id, 1, core.stock.home_shard(purchase_id))
    assert await core.idempotency.claim(purchase_id, twin) is None
    admission.hints.mark_sold_out(item_id)
    with pytest.raises(SoldOut):
        await admission.purchase(user, key, item_id, 1, "127.0.0.1")
    assert await core.idempotency.get(purchase_id) is None  # no record left to replay later


async def apply_one(core: CoreResources, message: PurchaseMessage) -> None:
    """Write one confirmed purchase as a consumer would (its own lease partition)."""
    from services.store.batch import Lease, apply_batch  # noqa: PLC0415
    from services.store.decide import Record  # noqa: PLC0415
    from services.store.leases import acquire_lease, ensure_leases  # noqa: PLC0415

    topic = f"review-{secrets.token_hex(3)}"
    await ensure_leases(core.pool, topic, 1)
    grant = await acquire_lease(core.pool, topic, 0, "test")
    async with core.pool.acquire() as conn:
        await apply_batch(conn, Lease(topic, 0, grant.epoch, "test"), [Record(0, message)])


async def test_redis_failing_after_the_produce_still_answers_202(
    admission: Admission, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 12: the message is durable once produced; a failed swap is no 503."""
    item_id = await new_item(core, 5)

    async def failing_mark(purchase_id: str, ours: Any, published: Any) -> int:
        raise UnavailableError("redis went away")

    monkeypatch.setattr(core.idempotency, "mark_published", failing_mark)
    admitted = await admission.purchase("swapper", secrets.token_hex(4), item_id, 1, "127.0.0.1")
    assert admitted.replayed is False


async def test_a_claim_redis_lost_mid_admission_is_written_again_before_the_202(
    admission: Admission, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23, item 3: Redis lost the claim while the message was being produced;
    the 202 must leave a record that a GET (on any gateway) finds."""
    item_id = await new_item(core, 5)
    real_publish = admission.producer.publish

    async def publish_then_lose(message: PurchaseMessage) -> tuple[int, int]:
        acked = await real_publish(message)
        await core.redis.delete(idempotency_key(message.purchase_id))  # as FLUSHALL would
        return acked

    monkeypatch.setattr(admission.producer, "publish", publish_then_lose)
    admitted = await admission.purchase("forgotten", secrets.token_hex(4), item_id, 1, "127.0.0.1")
    record = await core.idempotency.get(admitted.purchase_id)
    assert record is not None and record.state == "published"
    registry = admission.metrics.registry
    assert registry.get_sample_value("flashsale_published_records_rewritten_total") == 1


async def test_unknown_items_cost_one_lookup_and_rate_limits_come_first(
    admission: Admission, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 11: an unknown item id cost a Postgres query on every request."""
    calls = 0
    real_get_item = itemreads_module.get_item

    async def counting_get_item(pool: Any, item_id: str) -> Any:
        nonlocal calls
        calls += 1
        return await real_get_item(pool, item_id)

    monkeypatch.setattr(itemreads_module, "get_item", counting_get_item)
    unknown = fresh_id("nope")
    for _ in range(50):
        with pytest.raises(ApiError) as refused:
            await admission.purchase("prober", secrets.token_hex(4), unknown, 1, "127.0.0.1")
        assert refused.value.status == 404
    assert calls == 1
    admission.limits.per_user = parse("1/second")
    with pytest.raises(ApiError):
        await admission.purchase("limited", secrets.token_hex(4), fresh_id("nope"), 1, "x")
    with pytest.raises(ApiError) as limited:
        await admission.purchase("limited", secrets.token_hex(4), fresh_id("nope"), 1, "x")
    assert limited.value.status == 429
    assert calls == 2  # the second unknown id was refused before any lookup


async def test_requests_missing_the_item_cache_together_share_one_read(
    admission: Admission, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a cached item expires, every request in flight missed at once and each
    read Postgres (py-spy: 4% of the gateway's CPU in an open-stock sale)."""
    item_id = await new_item(core, 10)
    calls = 0
    real_get_item = itemreads_module.get_item

    async def counting_get_item(pool: Any, wanted: str) -> Any:
        nonlocal calls
        calls += 1
        return await real_get_item(pool, wanted)

    monkeypatch.setattr(itemreads_module, "get_item", counting_get_item)
    items = await asyncio.gather(*(admission.item(item_id) for _ in range(100)))
    assert calls == 1
    assert {item.item_id for item in items} == {item_id}


async def test_an_admin_write_during_a_sale_keeps_the_filter_exact(core: CoreResources) -> None:
    """Finding 5: a PUT rebuilt the filter with a plain SET from separate reads, so
    reserves that ran meanwhile were overwritten (units sold twice by the filter)."""
    item_id = await new_item(core, 1000)
    reserved = 0
    admin_done = asyncio.Event()

    async def buyer(n: int) -> None:
        nonlocal reserved
        for i in range(60):  # keeps buying for as long as the admin writes
            if admin_done.is_set():
                return
            pid = f"p_{n:04d}{i:04d}"
            message = PurchaseMessage(pid, f"u{n}", str(i), item_id, 1, 0, 0).encode()
            result = await core.stock.reserve(item_id, pid, 1, lambda _s, m=message: m)
            reserved += result.shard is not None
            await asyncio.sleep(0.002)

    async def admin() -> None:
        for stock in [1000, 1001, 1000, 1003, 1000] * 4:
            written = await write_item(core.pool, item_id, stock, 1)
            await apply_item_write(core, written)
        admin_done.set()

    await asyncio.gather(*(buyer(n) for n in range(10)), admin())
    (view,) = await read_views(core, [item_id])
    assert reserved > 0
    assert view.held_units == reserved
    assert view.filter_units == 1000 - reserved
    assert view.drift == 0


async def test_the_reconciler_covers_items_past_the_first_thousand(
    settings: Settings, core: CoreResources
) -> None:
    """Finding 1: only the first 1,000 items (by id) were ever reconciled, and every
    item cost a pass its Redis and Postgres calls, busy or idle."""
    async with core.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO items (item_id, stock) SELECT 'zzzy-' || g, 5 "
            "FROM generate_series(1, 1100) AS g ON CONFLICT DO NOTHING"
        )
    await core.redis.delete(active_items_key())
    await core.redis.set(swept_key(), "1")  # no sweep after a Redis loss in this test
    quiet = ActiveItems(core.redis, core.activity.pipe, quiet_s=0.0)
    republished: list[PurchaseMessage] = []

    async def publish(message: PurchaseMessage) -> None:
        republished.append(message)

    reconciler = Reconciler(core, publish, stale_s=0.0)
    assert (await reconciler.run_once()).visited == 0  # 1,100 idle items cost nothing

    late_id = "zzzz-" + secrets.token_hex(4)  # after every other item by id
    await write_and_load(core, late_id, 3)
    orphan = PurchaseMessage("p_" + secrets.token_hex(16), "u", "k", late_id, 1, 0, 0)
    await core.activity.mark(late_id, force=True)  # the gateway marks before reserving
    await core.stock.reserve(late_id, orphan.purchase_id, 1, lambda _s: orphan.encode(), first=0)
    report = await reconciler.run_once()
    assert report.visited == 1 and [m.purchase_id for m in republished] == [orphan.purchase_id]

    await core.redis.delete(*[stock_key(late_id, s) for s in range(core.stock.shards)])
    await core.activity.mark(late_id, force=True)  # a gateway met the missing filter
    await reconciler.run_once()
    (view,) = await read_views(core, [late_id])
    assert view.missing == [] and view.filter_units == 2 and view.held_units == 1

    # Once the item has nothing in flight and no drift, it leaves the active set.
    await core.stock.settle([Settlement(late_id, 0, orphan.purchase_id, 1, True)])
    reconciler.core = dataclasses.replace(core, activity=quiet)
    await reconciler.run_once()
    assert await core.redis.zscore(active_items_key(), late_id) is None


async def write_and_load(core: CoreResources, item_id: str, stock: int) -> None:
    written = await write_item(core.pool, item_id, stock, 1)
    await apply_item_write(core, written)


async def test_long_polls_per_user_are_bounded() -> None:
    """Finding 16: one token could hold thousands of waits."""
    waiters = ResultWaiters(max_per_owner=3)
    with waiters.watch("p1", "alice"), waiters.watch("p2", "alice"), waiters.watch("p3", "alice"):
        with pytest.raises(TooManyWaitsError), waiters.watch("p4", "alice"):
            pass
        with waiters.watch("p4", "bob"):
            pass
    with waiters.watch("p5", "alice"):
        pass


async def test_a_long_poll_rereads_only_when_woken(
    settings: Settings, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 16: every waiter re-read Postgres and Redis once a second."""
    from aiohttp.test_utils import TestClient, TestServer  # noqa: PLC0415

    from gateway.app import create_app  # noqa: PLC0415
    from services.tokens import issue_token  # noqa: PLC0415

    lookups = 0
    real_find = PurchaseFinder.find

    async def counting_find(*args: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await real_find(*args)

    monkeypatch.setattr(PurchaseFinder, "find", counting_find)
    item_id = await new_item(core, 5)
    lonely = settings.replace(topic=f"lonely-{secrets.token_hex(3)}")  # no consumer reads it
    async with TestClient(TestServer(create_app(lonely))) as client:
        gw = client.app[routes.GATEWAY]
        await wait_listening(gw.waiters)
        user = "poller"
        headers = {
            "Authorization": f"Bearer {issue_token(settings.secret, user, 600)}",
            "Idempotency-Key": secrets.token_hex(4),
        }
        response = await client.post("/v1/purchases", json={"item_id": item_id}, headers=headers)
        purchase_id = (await response.json())["purchase_id"]
        lookups = 0
        response = await client.get(f"/v1/purchases/{purchase_id}?wait=2.5", headers=headers)
        assert (await response.json())["status"] == "pending"  # no consumer runs here
    assert lookups == 1


async def wait_listening(waiters: ResultWaiters) -> None:
    async def listening() -> bool:
        return waiters.listening

    await wait_for(listening, timeout_s=10)


async def test_after_redis_lost_its_data_every_item_is_visited(core: CoreResources) -> None:
    """Review of issue 9: the active set is lost with Redis, so an item nobody buys
    kept a missing filter (a sale starting later opened on 503s)."""
    item_id = await new_item(core, 4)
    await core.redis.delete(*[stock_key(item_id, s) for s in range(core.stock.shards)])
    await core.redis.delete(active_items_key(), swept_key())
    reconciler = Reconciler(core, None, stale_s=60.0)

    async def swept() -> bool:
        await reconciler.run_once()
        return bool(await core.redis.exists(swept_key()))

    await wait_for(swept, timeout_s=60, interval_s=0)
    (view,) = await read_views(core, [item_id])
    assert view.missing == [] and view.filter_units == 4


async def test_a_slow_admitter_taken_over_keeps_the_reservation_it_lost(
    admission: Admission, core: CoreResources, settings: Settings
) -> None:
    """Review of issue 9: an admitter whose produce failed gave its units back even
    after a retry had taken the admission over and published that reservation."""
    item_id = await new_item(core, 10)
    user, key = "slow", secrets.token_hex(4)
    release = asyncio.Event()

    async def hung_then_failed(_message: PurchaseMessage) -> tuple[int, int]:
        await release.wait()
        raise UnavailableError("the broker did not answer in time")

    slow_producer = admission.producer
    admission.publisher.producer = type("Hung", (), {"publish": staticmethod(hung_then_failed)})()  # type: ignore[assignment]
    slow = asyncio.create_task(admission.purchase(user, key, item_id, 1, "127.0.0.1"))
    purchase_id = purchase_id_for(admission.settings.secret, user, key)
    await wait_for(lambda: _reserved(core, item_id, purchase_id), timeout_s=10)
    other = Admission(
        core,
        slow_producer,
        ItemHints(1.0, 0.5),
        GatewayMetrics(),
        admission.limits,
        admission.lookup,
    )
    other.settings = admission.settings
    retried = await other.purchase(user, key, item_id, 1, "127.0.0.1")
    assert retried.replayed is False
    release.set()
    # Not a 503: the purchase is the taker's now, and will be decided (issue 23).
    with pytest.raises(ApiError) as raised:
        await slow
    assert raised.value.code == "in_progress"
    assert await filter_units(core, item_id) == 9  # the published reservation stands


async def _reserved(core: CoreResources, item_id: str, purchase_id: str) -> bool:
    return any(purchase_id in shard.records for shard in await core.stock.snapshot(item_id))


async def test_postgres_down_changes_no_refusal_into_a_503(
    admission: Admission, core: CoreResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    item_id = await new_item(core, 1)
    admission.hints.mark_sold_out(item_id)

    def unavailable(_purchase_id: str) -> Any:
        raise UnavailableError("postgres restarting")

    monkeypatch.setattr(admission.lookup, "find", unavailable)
    with pytest.raises(SoldOut):
        await admission.purchase("late", secrets.token_hex(4), item_id, 1, "127.0.0.1")


async def test_a_key_admitted_before_is_answered_before_any_refusal_of_the_retry(
    admission: Admission, core: CoreResources
) -> None:
    """The claim finds earlier records; a refusal before the claim looks the record
    up, so it answers as the record says, not as the retry's body alone would."""
    item_id = await new_item(core, 5)
    user, key = "replayer", secrets.token_hex(4)
    first = await admission.purchase(user, key, item_id, 1, "127.0.0.1")
    assert await admission.purchase(user, key, item_id, 1, "x") == Admitted(
        first.purchase_id, replayed=True
    )
    admission.hints.mark_sold_out(item_id)
    assert await admission.purchase(user, key, item_id, 1, "x") == Admitted(
        first.purchase_id, replayed=True
    )
    for other_item, quantity in ((fresh_id("nope"), 1), (item_id, 2)):
        with pytest.raises(ApiError) as reused:
            await admission.purchase(user, key, other_item, quantity, "x")
        assert reused.value.code == "idempotency_key_reused"
