"""HTTP handlers: each reads top to bottom as the steps of api.md."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from gateway.admission import Admitted
from gateway.auth import require_admin, require_user, require_user_or_admin
from gateway.dashboard import dashboard_page
from gateway.errors import ApiError, json_answer
from gateway.lookups import PENDING, Known, Unknown, not_found, purchase_json
from gateway.ops import dashboard_json, healthz, metrics, readyz
from gateway.ratelimit import LOOKUP
from gateway.state import GATEWAY, Gateway
from gateway.validation import (
    idempotency_key,
    parse_item,
    parse_purchase,
    path_item_id,
    path_purchase_id,
    read_json_object,
    wait_seconds,
)
from services.errors import UnavailableError
from services.reconciler import apply_item_write
from services.schema import PurchaseMessage
from services.stockfilter.returns import announce_changed
from services.store.decide import CANCELLED, CONFIRMED, EXPIRED, PAID
from services.store.items import write_item
from services.store.notifications import TooManyWaitsError
from services.store.purchases import PurchaseRow, get_purchase

# Re-check Postgres this often while waiting with no live notification listener.
WAIT_RECHECK_S = 1.0
# Re-check this often while we cannot tell whether a purchase was accepted (Redis
# lost data): the fence passing wakes nobody, and a waiting client wants 200 or
# 404 as soon as it is true.
UNCERTAIN_RECHECK_S = 0.25
# How long a cancel or pay waits for the item's partition owner to apply it.
CANCEL_WAIT_S = 10.0


async def put_item(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    require_admin(request, gw.settings.admin_token, gw.settings.secret)
    item_id = path_item_id(request)
    spec = parse_item(await read_json_object(request, gw.settings.max_body_bytes))
    written = await write_item(gw.core.pool, item_id, spec.stock, spec.per_user_limit, spec.terms)
    await apply_item_write(gw.core, written)
    gw.hints.forget(item_id)
    # The others' hints only expire sooner: a lost message costs a wait, not a sale.
    with contextlib.suppress(UnavailableError):
        await announce_changed(gw.core.redis, [item_id])
    return web.json_response(written.item.as_json(), status=201 if written.created else 200)


async def _traced_purchase(
    request: web.Request, gw: Gateway, user_id: str, key: str, item_id: str, quantity: int
) -> Admitted:
    """The admission in a server span, continuing the client's trace (traceparent)
    when it sent one. No user data on the span: the item and the purchase id."""
    from opentelemetry.trace import SpanKind, StatusCode  # noqa: PLC0415

    assert gw.tracing.tracer is not None
    with gw.tracing.tracer.start_as_current_span(
        "POST /v1/purchases",
        context=gw.tracing.context_from(dict(request.headers)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": "/v1/purchases"},
        # A 409 or 429 is an answer, not a failure: only 5xx marks the span.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        span.set_attribute("flashsale.item_id", item_id)
        try:
            admitted = await gw.admission.purchase(
                user_id, key, item_id, quantity, gw.addresses.of(request)
            )
        except ApiError as refused:
            span.set_attribute("http.response.status_code", refused.status)
            span.set_attribute("flashsale.refusal", refused.code)
            if refused.status >= 500:
                span.set_status(StatusCode.ERROR, refused.code)
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        span.set_attribute("http.response.status_code", 202)
        span.set_attribute("flashsale.purchase_id", admitted.purchase_id)
        return admitted


async def get_item_handler(request: web.Request) -> web.Response:
    """Served from a cache a tenth of a second old at most, unknown ids from a
    negative one: a flood of reads of one item costs Postgres ten queries a second
    per gateway. What the caches do not answer costs the address a lookup."""
    gw = request.app[GATEWAY]
    item_id = path_item_id(request)
    item = gw.hints.view(item_id)
    if item is None:
        if gw.hints.is_missing(item_id):
            raise ApiError(404, "item_not_found", f"no item {item_id}")
        await gw.limit_address(request, LOOKUP)
        item = await gw.public_reads.item(item_id)
    return web.json_response(item.as_json())


async def post_purchase(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    user_id = require_user(request, gw.settings.secret)
    key = idempotency_key(request)
    order = parse_purchase(await read_json_object(request, gw.settings.max_body_bytes))
    client = gw.addresses.of(request)
    if gw.tracing.enabled:
        admitted = await _traced_purchase(request, gw, user_id, key, order.item_id, order.quantity)
    else:
        admitted = await gw.admission.purchase(user_id, key, order.item_id, order.quantity, client)
    location = f"/v1/purchases/{admitted.purchase_id}"
    return json_answer(
        {"purchase_id": admitted.purchase_id, "status": PENDING},
        status=202,
        headers={"Location": location},
    )


def _worth_waiting(found: Known | Unknown, user_id: str) -> bool:
    """Our own purchase still pending, or a purchase we cannot tell about yet."""
    if isinstance(found, Unknown):
        return not found.certain
    return found.pending and found.user_id == user_id


async def get_purchase_handler(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    user_id = require_user(request, gw.settings.secret)
    wait_s = min(wait_seconds(request), gw.settings.result_wait_max_s)
    await gw.limit_address(request, LOOKUP)
    purchase_id = path_purchase_id(request)
    if purchase_id is None:
        raise not_found()
    deadline = time.monotonic() + wait_s
    try:
        with gw.waiters.watch(purchase_id, user_id) as woken:
            found = await gw.finder.find(purchase_id)
            while _worth_waiting(found, user_id):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # A live listener wakes us when the purchase is decided; without one
                # (Postgres restarting) poll. A fence passing notifies nobody: while
                # uncertain, re-check often.
                notified = gw.waiters.listening and isinstance(found, Known)
                recheck_s = WAIT_RECHECK_S if isinstance(found, Known) else UNCERTAIN_RECHECK_S
                nap = left if notified else min(left, recheck_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=nap)
                if not woken.is_set() and notified:
                    break  # the time is up, and no notification means no change
                woken.clear()
                found = await gw.finder.find(purchase_id)
    except TooManyWaitsError as exc:
        raise ApiError(
            429, "rate_limited", f"too many long-polls at once: {exc}", {"Retry-After": "1"}
        ) from exc
    return web.json_response(gw.finder.owned(found, user_id, "get").as_json())


def _still_pending() -> ApiError:
    return ApiError(409, "not_final", "the purchase is still pending; retry", {"Retry-After": "1"})


async def cancel_purchase(request: web.Request) -> web.Response:
    """Cancel through the item's partition (design.md): produce a cancel message,
    then wait for its owner to apply it. Every retry is safe: a cancel applies once."""
    gw = request.app[GATEWAY]
    caller = require_user_or_admin(request, gw.settings.admin_token, gw.settings.secret)
    if caller is not None:  # the admin's token is no public caller's
        await gw.limit_address(request, LOOKUP)
    purchase_id = path_purchase_id(request)
    if purchase_id is None:
        raise not_found()
    row = gw.finder.owned(await gw.finder.find(purchase_id), caller, "cancel").row
    if row is None:
        raise _still_pending()
    if row.status == CONFIRMED:
        message = PurchaseMessage.cancel(
            row.purchase_id, row.user_id, row.item_id, row.quantity, int(time.time() * 1000)
        )
        row = await _apply_and_wait(gw, row, message)
    if row.status != CANCELLED:
        raise ApiError(409, "not_cancellable", f"a {row.status} purchase cannot be cancelled")
    return web.json_response(purchase_json(row))


async def pay_purchase(request: web.Request) -> web.Response:
    """The payment system marks a purchase on hold paid. Like a cancel, the pay goes
    through the item's partition: its owner decides paid or expired (pay_by by the
    database's clock) in one place, in log order. Every retry is safe."""
    gw = request.app[GATEWAY]
    require_admin(request, gw.settings.admin_token, gw.settings.secret)
    purchase_id = path_purchase_id(request)
    if purchase_id is None:
        raise not_found()
    row = gw.finder.owned(await gw.finder.find(purchase_id), None, "pay").row
    if row is None:
        raise _still_pending()
    if row.status == CONFIRMED and row.pay_by is None:
        raise ApiError(409, "not_on_hold", "the purchase's item sells without a hold")
    if row.status == CONFIRMED:
        message = PurchaseMessage.pay(
            row.purchase_id, row.user_id, row.item_id, row.quantity, int(time.time() * 1000)
        )
        row = await _apply_and_wait(gw, row, message)
    if row.status == EXPIRED:
        raise ApiError(409, "expired", "the purchase was not paid by pay_by; it expired")
    if row.status != PAID:
        raise ApiError(409, "not_payable", f"a {row.status} purchase cannot be paid")
    return web.json_response(purchase_json(row))


async def _apply_and_wait(gw: Gateway, row: PurchaseRow, message: PurchaseMessage) -> PurchaseRow:
    """Produce a cancel or pay to the item's partition, then wait until its owner
    moved the purchase on from confirmed (503 after CANCEL_WAIT_S: still queued)."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    try:
        # Watch before producing: the notification may come before the produce returns.
        with gw.waiters.watch(row.purchase_id, row.user_id) as woken:
            await gw.producer.publish(message)
            while row.status == CONFIRMED:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(
                        503,
                        "unavailable",
                        f"the {message.kind} is queued but not applied yet; retry",
                        {"Retry-After": "1"},
                    )
                nap = left if gw.waiters.listening else min(left, WAIT_RECHECK_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=nap)
                woken.clear()
                row = await get_purchase(gw.core.pool, row.purchase_id) or row
    except TooManyWaitsError as exc:
        raise ApiError(
            429, "rate_limited", f"too many waits at once: {exc}", {"Retry-After": "1"}
        ) from exc
    return row


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/items/{item_id}", put_item)
    app.router.add_get("/v1/items/{item_id}", get_item_handler)
    app.router.add_post("/v1/purchases", post_purchase)
    app.router.add_get("/v1/purchases/{purchase_id}", get_purchase_handler)
    app.router.add_post("/v1/purchases/{purchase_id}/cancel", cancel_purchase)
    app.router.add_post("/v1/purchases/{purchase_id}/pay", pay_purchase)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard.json", dashboard_json)
