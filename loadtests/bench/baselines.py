"""The baseline servers: small aiohttp apps that sell the same item another way.

* `redis_lock`: the lock design of the articles. Per item `SET lock NX PX ttl`
  (retried with jittered backoff while busy), read stock and sold from
  Postgres, insert the order and add to sold, release with a compare-and-delete
  Lua script. Nothing in Postgres stops an oversell: correctness rests on the
  lock alone. `--pause-ms` makes every holder stall between its read and its
  write (a GC pause, a slow disk) past the lock's TTL. `--local-queue` lines up
  a process's own requests on an asyncio.Lock first, so only one of them at a
  time contends for the Redis lock (a kinder variant than the articles').
* `postgres_row`: no Redis, no queue: one conditional UPDATE per request.
* `bare_http`: the same framework answering 202 with no I/O: the ceiling.

Every mode does the same request work as the gateway's cheapest path (read the
JSON body, verify the HMAC token, require an Idempotency-Key), so the figures
differ by the inventory design, not by the parsing.

Run as `python -m loadtests.bench.baselines MODE --fd N ...` on a listening
socket the parent passes down (no race for a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Any, NoReturn

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from loadtests.bench.redislock import RedisLock
from loadtests.bench.serve import serve_on_fd
from services.store.db import open_pool
from services.store.queries import parse_queries
from services.tokens import TokenError, verify_token

BARE_HTTP = "bare_http"
POSTGRES_ROW = "postgres_row"
REDIS_LOCK = "redis_lock"
MODES = (BARE_HTTP, POSTGRES_ROW, REDIS_LOCK)

POOL_SIZE = 10  # the pool the design's hot-row measurement used
REDIS_POOL_SIZE = 64
REDIS_POOL_WAIT_S = 5.0
LOCK_TTL_MS = 10_000  # the articles' usual "long enough" lease
# A request that cannot get the lock within this time is answered 503, as
# tryLock(waitTime) callers do.
LOCK_WAIT_S = 10.0

Handler = Callable[[web.Request], Coroutine[Any, Any, web.Response]]


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    mode: str
    secret: str
    database_url: str = ""
    redis_url: str = ""
    lock_ttl_ms: int = LOCK_TTL_MS
    pause_ms: int = 0
    local_queue: bool = False
    processes: int = 1  # server processes sharing the listening socket


@dataclass(frozen=True, slots=True)
class Purchase:
    user_id: str
    idempotency_key: str
    item_id: str


CONFIG = web.AppKey("config", BaselineConfig)
QUERIES = web.AppKey("queries", dict[str, str])
POOL = web.AppKey("pool", asyncpg.Pool)
LOCK = web.AppKey("lock", RedisLock)
LOCAL_QUEUES = web.AppKey("local_queues", dict[str, asyncio.Lock])


def create_app(config: BaselineConfig) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[QUERIES] = load_queries()
    app[LOCAL_QUEUES] = {}
    app.cleanup_ctx.append(_backends)
    handlers: dict[str, Handler] = {
        BARE_HTTP: bare_purchase,
        POSTGRES_ROW: row_purchase,
        REDIS_LOCK: lock_purchase,
    }
    app.router.add_post("/v1/purchases", handlers[config.mode])
    app.router.add_get("/healthz", healthz)
    return app


def load_queries() -> dict[str, str]:
    return parse_queries((resources.files("loadtests.bench") / "bench.sql").read_text())


async def _backends(app: web.Application) -> AsyncIterator[None]:
    """Open what the mode needs, close it in the same place."""
    config = app[CONFIG]
    async with contextlib.AsyncExitStack() as stack:
        if config.mode in (POSTGRES_ROW, REDIS_LOCK):
            pool = await open_pool(config.database_url, POOL_SIZE)
            stack.push_async_callback(pool.close)
            app[POOL] = pool
        if config.mode == REDIS_LOCK:
            connections = aioredis.BlockingConnectionPool.from_url(
                config.redis_url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT_S
            )
            stack.push_async_callback(connections.disconnect)
            client = aioredis.Redis(connection_pool=connections)
            stack.push_async_callback(client.aclose)
            script = (resources.files("loadtests.bench") / "release.lua").read_text()
            app[LOCK] = RedisLock(client, client.register_script(script), config.lock_ttl_ms)
        yield


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "mode": request.app[CONFIG].mode})


def _refuse(kind: type[web.HTTPException], code: str, detail: str) -> NoReturn:
    raise kind(text=json.dumps({"error": code, "detail": detail}), content_type="application/json")


async def parse_purchase(request: web.Request) -> Purchase:
    """Auth and validation, as the gateway does before any stock work."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        _refuse(web.HTTPUnauthorized, "unauthorized", "a bearer token is required")
    try:
        user_id = verify_token(request.app[CONFIG].secret, auth.removeprefix("Bearer "))
    except TokenError as exc:
        _refuse(web.HTTPUnauthorized, "unauthorized", str(exc))
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        _refuse(web.HTTPBadRequest, "idempotency_key_required", "send an Idempotency-Key")
    try:
        body = await request.json()
    except ValueError:
        _refuse(web.HTTPBadRequest, "bad_json", "the body is not JSON")
    item_id = body.get("item_id") if isinstance(body, dict) else None
    if not isinstance(item_id, str) or not item_id:
        _refuse(web.HTTPUnprocessableEntity, "bad_item", "item_id must be a string")
    return Purchase(user_id, key, item_id)


def _sold_out(item_id: str) -> web.Response:
    return web.json_response(
        {"error": "sold_out", "detail": f"item {item_id} is sold out"}, status=409
    )


def _sold(purchase: Purchase) -> web.Response:
    return web.json_response({"item_id": purchase.item_id, "status": "confirmed"}, status=201)


async def bare_purchase(request: web.Request) -> web.Response:
    purchase = await parse_purchase(request)
    return web.json_response(
        {"purchase_id": f"p_{purchase.user_id}", "status": "pending"}, status=202
    )


async def row_purchase(request: web.Request) -> web.Response:
    purchase = await parse_purchase(request)
    sold = await request.app[POOL].fetchval(request.app[QUERIES]["row_buy"], purchase.item_id)
    return _sold_out(purchase.item_id) if sold is None else _sold(purchase)


async def lock_purchase(request: web.Request) -> web.Response:
    """Lock, read, (pause), write, release: the critical section of the articles."""
    purchase = await parse_purchase(request)
    lock_key = f"bench:lock:{purchase.item_id}"
    if not request.app[CONFIG].local_queue:
        return await _sell_with_lock(request, purchase, lock_key)
    queue = request.app[LOCAL_QUEUES].setdefault(lock_key, asyncio.Lock())
    try:
        async with asyncio.timeout(LOCK_WAIT_S):
            await queue.acquire()
    except TimeoutError:
        _refuse(web.HTTPServiceUnavailable, "lock_timeout", "the item's lock stayed busy")
    try:
        return await _sell_with_lock(request, purchase, lock_key)
    finally:
        queue.release()


async def _sell_with_lock(request: web.Request, purchase: Purchase, lock_key: str) -> web.Response:
    lock = request.app[LOCK]
    token = await lock.acquire(lock_key, LOCK_WAIT_S)
    if token is None:
        _refuse(web.HTTPServiceUnavailable, "lock_timeout", "the item's lock stayed busy")
    try:
        return await _sell_under_lock(request, purchase)
    finally:
        await lock.release(lock_key, token)


async def _sell_under_lock(request: web.Request, purchase: Purchase) -> web.Response:
    queries = request.app[QUERIES]
    pause_s = request.app[CONFIG].pause_ms / 1000
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(queries["lock_read"], purchase.item_id)
        if row is None:
            _refuse(web.HTTPNotFound, "item_not_found", f"no item {purchase.item_id}")
        if row["sold"] >= row["stock"]:
            return _sold_out(purchase.item_id)
        if pause_s:
            # The holder stalls here; its lock may expire and another holder may
            # read the same `sold` before this one writes.
            await asyncio.sleep(pause_s)
        async with conn.transaction():
            await conn.execute(
                queries["lock_insert_order"],
                purchase.item_id,
                purchase.user_id,
                purchase.idempotency_key,
            )
            await conn.execute(queries["lock_add_sold"], purchase.item_id)
    return _sold(purchase)


def server_arguments(config: BaselineConfig) -> list[str]:
    """The command line `parse_arguments` reads back into `config` (with --fd added)."""
    return [
        config.mode,
        # One token each: a secret may begin with "-" (token_urlsafe), and argparse
        # reads "--secret -x..." as a missing value.
        f"--secret={config.secret}",
        f"--database-url={config.database_url}",
        f"--redis-url={config.redis_url}",
        f"--lock-ttl-ms={config.lock_ttl_ms}",
        f"--pause-ms={config.pause_ms}",
        *(["--local-queue"] if config.local_queue else []),
    ]


def parse_arguments(argv: list[str] | None = None) -> tuple[BaselineConfig, int]:
    parser = argparse.ArgumentParser(description="A baseline server of `flashsale bench`.")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--fd", type=int, required=True, help="listening socket to serve on")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--lock-ttl-ms", type=int, default=LOCK_TTL_MS)
    parser.add_argument("--pause-ms", type=int, default=0)
    parser.add_argument("--local-queue", action="store_true")
    args = parser.parse_args(argv)
    config = BaselineConfig(
        mode=args.mode,
        secret=args.secret,
        database_url=args.database_url,
        redis_url=args.redis_url,
        lock_ttl_ms=args.lock_ttl_ms,
        pause_ms=args.pause_ms,
        local_queue=args.local_queue,
    )
    return config, int(args.fd)


def main() -> None:
    config, fd = parse_arguments()
    serve_on_fd(lambda: create_app(config), fd)


if __name__ == "__main__":
    main()
