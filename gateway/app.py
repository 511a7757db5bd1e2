"""The aiohttp application factory: resources opened and closed in one cleanup_ctx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.admission import Admission
from gateway.clientaddr import ClientAddresses
from gateway.dashboard import Dashboard
from gateway.errors import error_middleware
from gateway.hints import ItemHints
from gateway.lookups import PurchaseFinder, incarnation_watch
from gateway.metrics import GatewayMetrics, metrics_middleware
from gateway.openapi import openapi_handler
from gateway.publicreads import PublicReads
from gateway.ratelimit import open_rate_limits
from gateway.routes import add_routes
from gateway.state import GATEWAY, Gateway
from services.producer import open_producer
from services.resources import open_core
from services.settings import Settings
from services.stockfilter.returns import returned_units_listener
from services.store.db import pool_exhaustions
from services.store.lookup import PurchaseLookup
from services.store.notifications import result_listener
from services.topics import open_end_offsets
from services.tracing import NO_TRACING, Tracing

# aiohttp's own cap on a body; the handlers apply the smaller limit of settings.
CLIENT_MAX_SIZE = 64 * 1024


def create_app(settings: Settings, tracing: Tracing = NO_TRACING) -> web.Application:
    metrics = GatewayMetrics()
    app = web.Application(
        middlewares=[metrics_middleware(metrics), error_middleware],
        client_max_size=CLIENT_MAX_SIZE,
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            core = await stack.enter_async_context(open_core(settings))
            metrics.watch_pool(lambda: pool_exhaustions(core.pool))
            producer = await stack.enter_async_context(open_producer(settings, tracing))
            # The dashboard's lag: one broker client for the gateway's life, not one a request.
            offsets = await stack.enter_async_context(open_end_offsets(settings.kafka_bootstrap))
            limits = open_rate_limits(settings, shared=(core.redis, core.pipe))
            stack.push_async_callback(limits.close)
            waiters = await stack.enter_async_context(result_listener(settings.database_url))
            hints = ItemHints(settings.item_cache_s, settings.sold_out_cache_s)
            # Units a cancellation returned are sold at once, not after the sold-out hint.
            await stack.enter_async_context(returned_units_listener(core.redis, hints.forget))
            lookup = PurchaseLookup(core.pool)
            stack.push_async_callback(lookup.close)
            finder = PurchaseFinder(core, producer, metrics)
            await stack.enter_async_context(incarnation_watch(finder))
            app[GATEWAY] = Gateway(
                settings=settings,
                core=core,
                producer=producer,
                limits=limits,
                hints=hints,
                metrics=metrics,
                waiters=waiters,
                admission=Admission(core, producer, hints, metrics, limits, lookup),
                dashboard=Dashboard(core, metrics, offsets),
                addresses=ClientAddresses(settings.trusted_networks()),
                public_reads=PublicReads(core, hints),
                finder=finder,
                tracing=tracing,
            )
            yield

    app.cleanup_ctx.append(resources)
    add_routes(app)
    app.router.add_get("/openapi.json", openapi_handler)
    return app
