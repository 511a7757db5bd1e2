"""The public routes for operators and viewers: health, readiness, metrics, the
dashboard's JSON. Each answers from a view built at most once per interval, one
build at a time; a per-address limit (in this gateway's memory, VIEW) keeps a
flood from one address to a bounded share of the gateway's CPU."""

from __future__ import annotations

import contextlib

from aiohttp import web

from gateway.ratelimit import VIEW
from gateway.state import GATEWAY
from services.errors import UnavailableError


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    await gw.limit_address(request, VIEW)
    checks = await gw.readiness()
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {name: "ok" if ok else "down" for name, ok in checks.items()},
    }
    if not ready:
        body["error"] = "unavailable"
        body["detail"] = "not ready: " + ", ".join(n for n, ok in checks.items() if not ok)
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    await gw.limit_address(request, VIEW)
    # The sale-state gauges are refreshed at scrape time; without Postgres the
    # request counters are still worth a scrape.
    with contextlib.suppress(UnavailableError):
        gw.metrics.observe_snapshot(await gw.dashboard.snapshot())
    return web.Response(
        body=gw.metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def dashboard_json(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    await gw.limit_address(request, VIEW)
    return web.json_response(await gw.dashboard.snapshot(), headers={"Cache-Control": "no-store"})
