"""A key that was admitted is never refused later, and one key names one purchase
across items (issue 23, item 3).

"Redis forgot the key" is the idempotency record deleted: what a TTL, an
eviction or a restart leaves. The HTTP tests run against the live stack (a real
gateway and consumers); the apply race and the reconciler run in-process against
the session's real Postgres and Redis, so the race can be held at its worst point.
"""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import asyncpg

from consumers.settle import settle_reservations
from services.reconciler import Reconciler, apply_item_write, read_views
from services.resources import CoreResources
from services.schema import PurchaseMessage, purchase_id_for
from services.stockfilter.filter import RESERVED
from services.stockfilter.keys import idempotency_key, stock_key
from services.store.batch import BatchResult, Lease, apply_batch
from services.store.decide import Record
from services.store.items import write_item
from services.store.leases import acquire_lease, ensure_leases
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack

Answer = tuple[int, dict[str, object]]


async def put_item(
    http: aiohttp.ClientSession, live: LiveStack, item_id: str, **fields: object
) -> None:
    body = {"stock": 5, "per_user_limit": 1, **fields}
    url = f"{live.url}/v1/items/{item_id}"
    async with http.put(url, json=body, headers=live.admin_headers) as response:
        assert response.status in (200, 201), await response.text()


async def buy(
    http: aiohttp.ClientSession, live: LiveStack, user: str, key: str, item_id: str, qty: int = 1
) -> Answer:
    async with http.post(
        f"{live.url}/v1/purchases",
        json={"item_id": item_id, "quantity": qty},
        headers=live.user_headers(user, key),
    ) as response:
        return response.status, await response.json()


async def final(
    http: aiohttp.ClientSession, live: LiveStack, user: str, purchase_id: object
) -> dict[str, object]:
    url = f"{live.url}/v1/purchases/{purchase_id}?wait=30"
    async with http.get(url, headers=live.user_headers(user)) as response:
        assert response.status == 200
        body: dict[str, object] = await response.json()
    assert body["status"] != "pending"
    return body


async def bought_then_forgotten(
    http: aiohttp.ClientSession,
    live: LiveStack,
    core: CoreResources,
    item_id: str,
    qty: int = 1,
) -> tuple[str, str, str]:
    """A confirmed purchase whose idempotency record Redis then lost: (user, key, id)."""
    user, key = fresh_id("user"), secrets.token_hex(8)
    status, body = await buy(http, live, user, key, item_id, qty)
    assert status == 202, body
    assert (await final(http, live, user, body["purchase_id"]))["status"] == "confirmed"
    assert await core.redis.delete(idempotency_key(str(body["purchase_id"]))) == 1
    return user, key, str(body["purchase_id"])


async def test_a_known_key_is_replayed_after_the_limit_was_lowered(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    """Was 422 quantity_above_limit: only sold_out, rate_limited and sale_ended
    refusals asked Postgres whether the key was admitted before."""
    item_id = fresh_id()
    await put_item(http, live, item_id, per_user_limit=2)
    user, key, purchase_id = await bought_then_forgotten(http, live, core, item_id, qty=2)
    await put_item(http, live, item_id, per_user_limit=1)
    assert await buy(http, live, user, key, item_id, 2) == (
        202,
        {"purchase_id": purchase_id, "status": "pending"},
    )
    status, body = await buy(http, live, fresh_id("user"), key, item_id, 2)
    assert (status, body["error"]) == (422, "quantity_above_limit")  # others are still refused


async def test_a_known_key_is_replayed_while_the_lost_filter_is_rebuilt(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    """Was 503 unavailable: Redis lost the key and the item's filter (a restart,
    a FLUSHALL), and a shard found missing answered 503 before Postgres was
    asked (the strict checker's RETRY_REFUSED, seed 3; the aimed nemesis)."""
    item_id = fresh_id()
    await put_item(http, live, item_id)
    user, key, purchase_id = await bought_then_forgotten(http, live, core, item_id)
    await core.redis.delete(*(stock_key(item_id, shard) for shard in range(core.stock.shards)))
    assert await buy(http, live, user, key, item_id) == (
        202,
        {"purchase_id": purchase_id, "status": "pending"},
    )


async def test_a_known_key_is_replayed_after_the_sale_window_moved(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    """Was 409 not_started: the window moved to the future after the purchase."""
    item_id = fresh_id()
    await put_item(http, live, item_id)
    user, key, purchase_id = await bought_then_forgotten(http, live, core, item_id)
    await put_item(http, live, item_id, starts_at="2099-01-01T00:00:00Z")
    assert await buy(http, live, user, key, item_id) == (
        202,
        {"purchase_id": purchase_id, "status": "pending"},
    )


async def test_a_known_key_sent_for_an_unknown_item_is_a_reused_key(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    """Was 404 item_not_found once Redis forgot the key; with the record it is 422
    idempotency_key_reused, and now it is that either way."""
    item_id = fresh_id()
    await put_item(http, live, item_id)
    user, key, _ = await bought_then_forgotten(http, live, core, item_id)
    status, body = await buy(http, live, user, key, fresh_id("nothing"))
    assert (status, body["error"]) == (422, "idempotency_key_reused")


async def settled_units(core: CoreResources, item_id: str) -> int | None:
    """The item's filter units once it holds no reservation record; else None."""
    shards = await core.stock.snapshot(item_id)
    if any(shard.records for shard in shards):
        return None
    return sum(shard.units or 0 for shard in shards)


async def test_a_key_reused_for_another_item_is_refused_while_redis_holds_it(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    first_item, second_item = fresh_id(), fresh_id()
    await put_item(http, live, first_item)
    await put_item(http, live, second_item)
    user, key = fresh_id("user"), secrets.token_hex(8)
    status, _ = await buy(http, live, user, key, first_item)
    assert status == 202
    status, body = await buy(http, live, user, key, second_item)
    assert (status, body["error"]) == (422, "idempotency_key_reused")
    assert await settled_units(core, second_item) == 5


async def test_a_key_reused_for_another_item_after_redis_forgot_is_one_purchase(
    live: LiveStack, http: aiohttp.ClientSession, core: CoreResources
) -> None:
    """The copy for the second item is admitted (nothing tells the gateway the key
    is taken without a Postgres read on every admission); its consumer finds the
    purchase decided and gives its unit back. The first request's retries used to
    get 422 idempotency_key_reused from the record the copy left in Redis."""
    first_item, second_item = fresh_id(), fresh_id()
    await put_item(http, live, first_item)
    await put_item(http, live, second_item)
    user, key, purchase_id = await bought_then_forgotten(http, live, core, first_item)
    status, body = await buy(http, live, user, key, second_item)
    assert (status, body["purchase_id"]) == (202, purchase_id)
    assert await wait_for(lambda: settled_units(core, second_item)) == 5
    purchase = await final(http, live, user, purchase_id)
    assert (purchase["item_id"], purchase["status"]) == (first_item, "confirmed")
    rows = await core.pool.fetch(
        "SELECT item_id FROM purchases WHERE user_id = $1 AND idempotency_key = $2", user, key
    )
    assert [row["item_id"] for row in rows] == [first_item]
    sold = await core.pool.fetchval("SELECT sold FROM items WHERE item_id = $1", second_item)
    assert sold == 0
    # The request Postgres holds is still the same request: same id, no new unit.
    assert await buy(http, live, user, key, first_item) == (
        202,
        {"purchase_id": purchase_id, "status": "pending"},
    )
    assert await settled_units(core, first_item) == 4


async def new_item(core: CoreResources, stock: int, levels: list[int] | None = None) -> str:
    """An item in Postgres and in the filter; `levels`: its shards' units, set by hand."""
    item_id = fresh_id()
    await apply_item_write(core, await write_item(core.pool, item_id, stock, 1))
    for shard, units in enumerate(levels or []):
        await core.redis.set(stock_key(item_id, shard), units)
    return item_id


async def reserved(core: CoreResources, message: PurchaseMessage, offset: int = 0) -> Record:
    """The message's unit taken in the filter, as its admission took it; its record."""
    code, _ = await core.stock.reserve_at(
        message.item_id, message.shard, message.purchase_id, message.quantity, message.encode()
    )
    assert code == RESERVED
    return Record(offset, message)


async def fresh_leases(core: CoreResources, partitions: int) -> list[Lease]:
    """Leases on a topic of their own: nothing the live consumers read."""
    topic = f"known-keys-{secrets.token_hex(3)}"
    await ensure_leases(core.pool, topic, partitions)
    grants = [await acquire_lease(core.pool, topic, p, "test") for p in range(partitions)]
    return [Lease(topic, p, grant.epoch, "test") for p, grant in enumerate(grants)]


async def waiting_on_a_lock(core: CoreResources, conn: asyncpg.Connection) -> bool:
    pid = conn.get_server_pid()
    event = await core.pool.fetchval(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
    )
    return bool(event == "Lock")


async def test_two_items_deciding_one_key_side_by_side_keep_one_purchase_and_every_unit(
    core: CoreResources,
) -> None:
    """The copies of one purchase for two items are in two partitions, decided by two
    consumers at once. Both read no row for the key, both confirm; the second insert
    waits on the first's row and is skipped. The loser was still counted confirmed:
    its consumer settled its reservation without giving the unit back (a unit lost
    to the filter), and the unit it held in the batch's reckoning refused the same
    user's next purchase of that item (per_user_limit) although they hold none."""
    secret = core.settings.secret
    first_item = await new_item(core, 1)
    second_item = await new_item(core, 2, levels=[2] + [0] * (core.stock.shards - 1))
    user, key, later_key = "twice", secrets.token_hex(8), secrets.token_hex(8)
    purchase_id = purchase_id_for(secret, user, key)
    first = Record(0, PurchaseMessage(purchase_id, user, key, first_item, 1, 0, 0))
    copy = await reserved(core, PurchaseMessage(purchase_id, user, key, second_item, 1, 0, 0))
    # The same user's own purchase of the second item, later in the same batch.
    later_id = purchase_id_for(secret, user, later_key)
    later_message = PurchaseMessage(later_id, user, later_key, second_item, 1, 0, 0)
    later = await reserved(core, later_message, offset=1)
    winner_lease, loser_lease = await fresh_leases(core, 2)
    async with core.pool.acquire() as winner, core.pool.acquire() as loser:
        held_open = winner.transaction()
        await held_open.start()
        await apply_batch(winner, winner_lease, [first])  # inserted, not committed yet
        racing = asyncio.ensure_future(apply_batch(loser, loser_lease, [copy, later]))
        await wait_for(lambda: waiting_on_a_lock(core, loser))
        await held_open.commit()
        result: BatchResult = await racing
    copy_decision, later_decision = result.decisions.decisions
    assert copy_decision.duplicate
    # Not per_user_limit: the user holds no unit of the second item.
    assert (later_decision.status, later_decision.reason) == ("confirmed", None)
    await settle_reservations(core, result)
    assert await settled_units(core, second_item) == 1  # the copy's unit came back
    rows = await core.pool.fetch(
        "SELECT item_id, status FROM purchases WHERE purchase_id = $1", purchase_id
    )
    assert [(r["item_id"], r["status"]) for r in rows] == [(first_item, "confirmed")]
    solds = await core.pool.fetch(
        "SELECT item_id, sold FROM items WHERE item_id = ANY($1)", [first_item, second_item]
    )
    assert {r["item_id"]: r["sold"] for r in solds} == {first_item: 1, second_item: 1}


async def test_the_reconciler_gives_back_the_unit_of_a_copy_for_another_item(
    core: CoreResources,
) -> None:
    """A reservation record for item B of a purchase Postgres holds for item A (the
    key reused after Redis forgot it), settled by the reconciler (the consumer's own
    settle failed, or the reconciler's pass came between commit and settle): it
    used to be dropped as confirmed, its unit never given back to B's filter."""
    first_item = await new_item(core, 1)
    second_item = await new_item(core, 1, levels=[1] + [0] * (core.stock.shards - 1))
    user, key = "reconciled", secrets.token_hex(8)
    purchase_id = purchase_id_for(core.settings.secret, user, key)
    (lease,) = await fresh_leases(core, 1)
    first = Record(0, PurchaseMessage(purchase_id, user, key, first_item, 1, 0, 0))
    async with core.pool.acquire() as conn:
        await apply_batch(conn, lease, [first])
    await reserved(core, PurchaseMessage(purchase_id, user, key, second_item, 1, 0, 0))
    reconciler = Reconciler(core, publish=None, stale_s=core.settings.reservation_stale_s)
    (view,) = await read_views(core, [second_item])
    assert view.drift == 0  # the copy's unit is in flight, not lost
    assert (await reconciler.reconcile(view)).settled == 1
    assert await settled_units(core, second_item) == 1


async def test_two_keys_reused_crosswise_over_two_items_are_decided_again_after_a_deadlock(
    core: CoreResources,
) -> None:
    """Two purchases, each sent for both items, in opposite orders in the two
    partitions: each batch holds the row the other waits for, and Postgres aborts
    one with a deadlock error, which used to escape apply_batch (no
    UnavailableError: the consumer's loop let it end the process)."""
    secret = core.settings.secret
    first_item = await new_item(core, 2)
    second_item = await new_item(core, 2, levels=[2] + [0] * (core.stock.shards - 1))
    key = secrets.token_hex(8)
    p_id, q_id = purchase_id_for(secret, "p-user", key), purchase_id_for(secret, "q-user", key)
    p_first = Record(0, PurchaseMessage(p_id, "p-user", key, first_item, 1, 0, 0))
    q_first = Record(1, PurchaseMessage(q_id, "q-user", key, first_item, 1, 0, 0))
    q_copy = await reserved(core, PurchaseMessage(q_id, "q-user", key, second_item, 1, 0, 0))
    p_message = PurchaseMessage(p_id, "p-user", key, second_item, 1, 0, 0)
    p_copy = await reserved(core, p_message, offset=1)
    winner_lease, loser_lease = await fresh_leases(core, 2)
    async with core.pool.acquire() as winner, core.pool.acquire() as loser:
        held_open = winner.transaction()
        await held_open.start()
        await apply_batch(winner, winner_lease, [p_first])  # holds p, uncommitted
        racing = asyncio.ensure_future(apply_batch(loser, loser_lease, [q_copy, p_copy]))
        await wait_for(lambda: waiting_on_a_lock(core, loser))  # holds q, waits for p
        # Waits for q: the loser, waiting longer, finds the cycle and is aborted.
        await apply_batch(winner, winner_lease, [q_first])
        await held_open.commit()
        result: BatchResult = await racing
    assert [d.duplicate for d in result.decisions.decisions] == [True, True]
    await settle_reservations(core, result)
    assert await settled_units(core, second_item) == 2
    rows = await core.pool.fetch(
        "SELECT item_id FROM purchases WHERE purchase_id = ANY($1)", [p_id, q_id]
    )
    assert [r["item_id"] for r in rows] == [first_item, first_item]
