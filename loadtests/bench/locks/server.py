"""The HTTP face of a lock design for the spike: the baselines' request work, then `sell`.

Each request does what the gateway's cheapest path does (token, Idempotency-Key,
JSON body: `parse_purchase` of the baselines), then one purchase under the
design's lock. 201 sold, 409 sold out, 503 the lock stayed busy.

Run as `python -m loadtests.bench.locks.server SETUP_JSON --secret S --fd N`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from aiohttp import web

from loadtests.bench.baselines import CONFIG, BaselineConfig, healthz, parse_purchase
from loadtests.bench.locks.designs import Busy, LockSetup, Opened, open_design
from loadtests.bench.locks.section import Outcome, sell
from loadtests.bench.serve import serve_on_fd

SETUP = web.AppKey("setup", LockSetup)
OPENED = web.AppKey("opened", Opened)


def create_app(setup: LockSetup, secret: str) -> web.Application:
    app = web.Application()
    app[SETUP] = setup
    app[CONFIG] = BaselineConfig(setup.design, secret)  # what parse_purchase reads
    app.cleanup_ctx.append(_design)
    app.router.add_post("/v1/purchases", purchase)
    app.router.add_get("/healthz", healthz)
    return app


async def _design(app: web.Application) -> AsyncIterator[None]:
    async with open_design(app[SETUP]) as opened:
        app[OPENED] = opened
        yield


async def _nothing() -> None:
    return None


async def purchase(request: web.Request) -> web.Response:
    bought = await parse_purchase(request)
    try:
        outcome = await sell(
            request.app[OPENED],
            bought.item_id,
            bought.user_id,
            bought.idempotency_key,
            _nothing,
        )
    except Busy:
        return web.json_response({"error": "lock_timeout"}, status=503)
    if outcome is Outcome.SOLD:
        return web.json_response({"item_id": bought.item_id, "status": "confirmed"}, status=201)
    if outcome is Outcome.SOLD_OUT:
        return web.json_response({"error": "sold_out"}, status=409)
    return web.json_response({"error": "fenced"}, status=409)


def main() -> None:
    parser = argparse.ArgumentParser(description="A lock design's server for the spike.")
    parser.add_argument("setup")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    serve_on_fd(lambda: create_app(LockSetup.from_json(args.setup), args.secret), args.fd)


if __name__ == "__main__":
    main()
