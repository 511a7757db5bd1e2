"""The auto-pipeline on a connection that breaks: a command is never run twice.

A TCP proxy in front of the real Redis loses a reply on demand: the command
reaches Redis and runs, then the client's connection is reset before the reply
arrives. The caller may get an error (the outcome is unknown to it), but Redis
must not run a command a second time unless running it twice is harmless:
adjust, a drop of a claim and the rate limiter's scripts are not; reserve, a
claim and a replacement of one answer a second run as they did the first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from infra.embedded.redis import EmbeddedRedis
from services.stockfilter.admit import ClaimAndReserve
from services.stockfilter.autopipe import AutoPipeline
from services.stockfilter.client import close_redis, open_redis
from services.stockfilter.filter import ALREADY_RESERVED, RESERVED, StockFilter
from services.stockfilter.idempotency import IdempotencyStore, new_claim
from services.stockfilter.keys import stock_key
from tests.conftest import fresh_id


class ReplyLosingProxy:
    """Forwards every byte both ways until told to lose the next reply."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lose_next_reply = False
        self.replies_lost = 0
        self._clients: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._clients.append(writer)
        for pump in (self._pump(reader, up_writer), self._pump(up_reader, writer, replies=True)):
            task = asyncio.ensure_future(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool = False
    ) -> None:
        try:
            while data := await source.read(65536):
                if replies and self.lose_next_reply:
                    self.lose_next_reply = False
                    self.replies_lost += 1
                    sink.transport.abort()  # the command ran; its reply never arrives
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    async def close_clients(self) -> None:
        """What a Redis restart does to pooled connections: the server closes them."""
        for writer in self._clients:
            writer.close()
        for writer in self._clients:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        self._clients.clear()

    async def close(self) -> None:
        await self.close_clients()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@pytest.fixture
async def proxy(redis_server: EmbeddedRedis) -> AsyncIterator[tuple[ReplyLosingProxy, int]]:
    upstream_port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    lossy = ReplyLosingProxy(upstream_port)
    server = await asyncio.start_server(lossy.serve, "127.0.0.1", 0)
    try:
        yield lossy, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await lossy.close()
        await server.wait_closed()


async def test_a_script_whose_reply_was_lost_is_not_run_again(
    redis_server: EmbeddedRedis, proxy: tuple[ReplyLosingProxy, int]
) -> None:
    lossy, port = proxy
    direct = open_redis(redis_server.url, cluster=False)
    client = open_redis(f"redis://127.0.0.1:{port}", cluster=False)
    try:
        key = fresh_id("counted")
        incr = client.register_script("return redis.call('INCR', KEYS[1])")
        pipe = AutoPipeline(client)
        await client.script_load(incr.script)
        await pipe.get(key)  # a pooled connection through the proxy
        lossy.lose_next_reply = True
        with contextlib.suppress(RedisError):
            await pipe.script(incr, [key], [])
        assert lossy.replies_lost == 1
        assert int(await direct.get(key)) == 1  # type: ignore[arg-type]
    finally:
        await close_redis(client)
        await close_redis(direct)


async def test_a_claim_whose_reply_was_lost_is_never_mistaken_for_a_twin(
    redis_server: EmbeddedRedis, proxy: tuple[ReplyLosingProxy, int]
) -> None:
    """Run twice, the claim would answer the request with its own claim, as if a
    twin were admitting it: 409 in_progress for a request nobody else made."""
    lossy, port = proxy
    client = open_redis(f"redis://127.0.0.1:{port}", cluster=False)
    try:
        pipe = AutoPipeline(client)
        store = IdempotencyStore(client, 60, pipe)
        await store.get(fresh_id("warm"))  # scripts aside, a pooled connection
        await store.claim(fresh_id("p"), new_claim("warm", "sku", 1))  # scripts loaded
        mine = new_claim("alice", "sku", 1)
        lossy.lose_next_reply = True
        earlier = await store.claim(fresh_id("p"), mine)
        assert lossy.replies_lost == 1
        # Sent again on a new connection, the claim knows its own record: won.
        assert earlier is None
    finally:
        await close_redis(client)


async def test_connections_closed_while_idle_are_replaced_without_an_error(
    proxy: tuple[ReplyLosingProxy, int],
) -> None:
    """A Redis restart resets every pooled connection: the next calls still answer."""
    lossy, port = proxy
    client = open_redis(f"redis://127.0.0.1:{port}", cluster=False)
    try:
        pipe = AutoPipeline(client)
        key = fresh_id("reset")
        await client.set(key, "v")
        assert await asyncio.gather(*(pipe.get(key) for _ in range(20))) == [b"v"] * 20
        await lossy.close_clients()
        assert await asyncio.gather(*(pipe.get(key) for _ in range(20))) == [b"v"] * 20
    finally:
        await close_redis(client)


async def test_a_command_that_cannot_be_packed_fails_alone(redis_server: EmbeddedRedis) -> None:
    client = open_redis(redis_server.url, cluster=False)
    try:
        key = fresh_id("packed")
        await client.set(key, "v")
        echo = client.register_script("return ARGV[1]")
        pipe = AutoPipeline(client)
        good, bad = await asyncio.gather(
            pipe.get(key), pipe.script(echo, [key], [None]), return_exceptions=True
        )
        assert good == b"v"
        assert isinstance(bad, TypeError)
    finally:
        await close_redis(client)


async def test_scripts_that_cannot_be_reloaded_fail_alone(redis_server: EmbeddedRedis) -> None:
    """After NOSCRIPT the missing scripts are loaded; when that fails, the calls
    that did run keep their answers (a reserve that took a unit is not a 503)."""
    admin = open_redis(redis_server.url, cluster=False)
    user, password = fresh_id("pipe-user"), fresh_id("pw")
    await admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-script|load"
    )
    host_port = redis_server.url.removeprefix("redis://")
    client = open_redis(f"redis://{user}:{password}@{host_port}", cluster=False)
    try:
        key = fresh_id("reloaded")
        loaded = admin.register_script("return redis.call('INCR', KEYS[1])")
        forgotten = admin.register_script("return 'never loaded ' .. KEYS[1]")
        await admin.script_load(loaded.script)
        pipe = AutoPipeline(client)
        ran, refused = await asyncio.gather(
            pipe.script(loaded, [key], []),
            pipe.script(forgotten, [key], []),
            return_exceptions=True,
        )
        assert isinstance(refused, RedisError)
        assert ran == 1
    finally:
        await close_redis(client)
        await admin.execute_command("ACL", "DELUSER", user)
        await close_redis(admin)


async def test_a_redis_restart_costs_no_error_on_pooled_connections(tmp_path: Path) -> None:
    """Kill -9 and a start on the same port: the pooled connections are dead, the
    scripts forgotten; the next claims reconnect and reload before they send."""
    server = EmbeddedRedis(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    try:
        client = open_redis(server.url, cluster=False)
        try:
            store = IdempotencyStore(client, 60, AutoPipeline(client))
            claims = [store.claim(fresh_id("p"), new_claim("u", "sku", 1)) for _ in range(30)]
            assert await asyncio.gather(*claims) == [None] * 30
            await asyncio.to_thread(server.restart)
            claims = [store.claim(fresh_id("p"), new_claim("u", "sku", 1)) for _ in range(30)]
            assert await asyncio.gather(*claims) == [None] * 30
        finally:
            await close_redis(client)
    finally:
        await asyncio.to_thread(server.stop)


async def test_close_answers_every_call_queued_before_it(redis_server: EmbeddedRedis) -> None:
    """Calls queued in this loop turn are not sent yet when close() starts: it
    sends them and waits, so none is answered on a closed client, or never."""
    client = open_redis(redis_server.url, cluster=False)
    try:
        key = fresh_id("closing")
        await client.set(key, "v")
        pipe = AutoPipeline(client)
        queued = [asyncio.ensure_future(pipe.get(key)) for _ in range(5)]
        await asyncio.sleep(0)  # each call is in the queue, its flush not started
        await pipe.close()
        assert all(call.done() for call in queued)
        assert [call.result() for call in queued] == [b"v"] * 5
    finally:
        await close_redis(client)


async def test_a_reserve_whose_reply_was_lost_is_sent_again_and_takes_one_unit(
    redis_server: EmbeddedRedis, proxy: tuple[ReplyLosingProxy, int]
) -> None:
    """A reserve is safe to run twice (the second finds its own record): its
    caller gets an answer, not a 503 that leaves the unit reserved."""
    lossy, port = proxy
    client = open_redis(f"redis://127.0.0.1:{port}", cluster=False)
    try:
        stock = StockFilter(client, 1)
        item_id = fresh_id()
        await stock.set_remaining(item_id, 5)
        await stock.reserve_at(item_id, 0, "warm", 1, b"m")  # scripts loaded, a connection
        lossy.lose_next_reply = True
        code, left = await stock.reserve_at(item_id, 0, "p1", 1, b"m")
        assert lossy.replies_lost == 1
        assert (code, left) == (ALREADY_RESERVED, 3)
        assert await stock.shard_levels(item_id) == [3]
    finally:
        await close_redis(client)


async def test_claim_and_swap_run_twice_answer_as_if_run_once(redis_server: EmbeddedRedis) -> None:
    """What any resend after a lost reply does (the pipeline's, or redis-py's own
    retry on a cluster, where claims go direct): the second run changes nothing
    and gives the first run's answer, so no request mistakes its own claim for a
    twin's, and a published mark is not reported lost."""
    client = open_redis(redis_server.url, cluster=False)
    try:
        store = IdempotencyStore(client, 60, AutoPipeline(client))
        purchase_id = fresh_id("p")
        mine = new_claim("alice", "sku", 1, 0)
        assert await store.claim(purchase_id, mine) is None
        assert await store.claim(purchase_id, mine) is None
        twin = new_claim("alice", "sku", 1, 0)
        assert await store.claim(purchase_id, twin) == mine
        published = mine.published(0)
        assert await store.swap(purchase_id, mine, published)
        assert await store.swap(purchase_id, mine, published)
        assert not await store.swap(purchase_id, mine, mine.at_shard(1))
        assert await store.get(purchase_id) == published
    finally:
        await close_redis(client)


async def test_claim_and_reserve_run_twice_reserve_once(redis_server: EmbeddedRedis) -> None:
    """The one-call admission sent again after a lost reply: the second run finds
    its own claim and its own reservation, and takes no second unit."""
    client = open_redis(redis_server.url, cluster=False)
    try:
        pipe = AutoPipeline(client)
        stock = StockFilter(client, 1, pipe)
        admit = ClaimAndReserve(IdempotencyStore(client, 60, pipe), stock)
        item_id, purchase_id = fresh_id("twice"), fresh_id("p")
        await client.set(stock_key(item_id, 0), 5)
        claim = new_claim("alice", item_id, 2, 0)
        first = await admit(purchase_id, claim, b"reservation")
        again = await admit(purchase_id, claim, b"reservation")
        assert (first.earlier, first.code, first.left) == (None, RESERVED, 3)
        assert (again.earlier, again.code, again.left) == (None, ALREADY_RESERVED, 3)
        assert int(await client.get(stock_key(item_id, 0))) == 3  # type: ignore[arg-type]
    finally:
        await close_redis(client)
