"""Parsing and validating requests: every malformed input becomes a clear 4xx."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import ApiError
from services.store.items import SaleTerms

ITEM_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
PURCHASE_ID_PATTERN = re.compile(r"p_[0-9a-f]{32}")
IDEMPOTENCY_KEY_MAX_CHARS = 64
MAX_INT = 1_000_000_000
WAIT_MAX_S = 30.0
HOLD_MAX_S = 86_400
# RFC 3339 in UTC: a Z or a zero offset, seconds with an optional fraction.
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|\+00:00)")


@dataclass(frozen=True, slots=True)
class PurchaseRequest:
    item_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class ItemRequest:
    stock: int
    per_user_limit: int
    terms: SaleTerms


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body may be at most {max_bytes} bytes")


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, however it arrives (TCP segments, chunks), never more than max_bytes."""
    body = bytearray()
    # One read returns only what is buffered now: read on until the end of the body.
    while chunk := await request.content.read(max_bytes + 1 - len(body)):
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    raw = await _read_body(request, max_bytes)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = _strict_loads(raw)  # the slow parser only to word the refusal
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", "the body must be a JSON object")
    return body


def _strict_loads(raw: bytes) -> Any:
    """What orjson refused, worded by `json`. The two parsers differ only on valid
    JSON: orjson reads an integer wider than 64 bits as a float and one of hundreds
    of digits not at all (every integer field is range-checked, so the answer is
    the same 422), and it reads nesting up to 1,023 levels where `json` stopped
    near 1,000 (such a body is now parsed, then judged by its fields)."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        # A few thousand "[" fit in the size limit and nest deeper than json can parse.
        raise ApiError(400, "invalid_json", "the body nests too deeply") from exc


def _integer(body: dict[str, Any], field: str, low: int, high: int = MAX_INT) -> int:
    value = body[field]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3.0 is the integer 3
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, "invalid_body", f"{field} must be an integer")
    if not low <= value <= high:
        raise ApiError(422, "invalid_body", f"{field} must be between {low} and {high}")
    return value


def _check_fields(body: dict[str, Any], required: set[str], optional: set[str]) -> None:
    missing = required - body.keys()
    if missing:
        raise ApiError(422, "invalid_body", f"missing field(s): {', '.join(sorted(missing))}")
    unknown = body.keys() - required - optional
    if unknown:
        raise ApiError(422, "invalid_body", f"unknown field(s): {', '.join(sorted(unknown))}")


def parse_purchase(body: dict[str, Any]) -> PurchaseRequest:
    _check_fields(body, {"item_id"}, {"quantity"})
    item_id = body["item_id"]
    if not isinstance(item_id, str) or not ITEM_ID_PATTERN.fullmatch(item_id):
        raise ApiError(422, "invalid_body", "item_id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    quantity = _integer(body, "quantity", 1) if "quantity" in body else 1
    return PurchaseRequest(item_id, quantity)


def parse_item(body: dict[str, Any]) -> ItemRequest:
    _check_fields(body, {"stock"}, {"per_user_limit", "starts_at", "ends_at", "hold_s"})
    stock = _integer(body, "stock", 0)
    limit = _integer(body, "per_user_limit", 1) if "per_user_limit" in body else 1
    starts_at, ends_at = _moment(body, "starts_at"), _moment(body, "ends_at")
    if starts_at is not None and ends_at is not None and starts_at >= ends_at:
        raise ApiError(422, "invalid_body", "starts_at must come before ends_at")
    hold_s = None if body.get("hold_s") is None else _integer(body, "hold_s", 1, HOLD_MAX_S)
    return ItemRequest(stock, limit, SaleTerms(starts_at, ends_at, hold_s))


def _moment(body: dict[str, Any], field: str) -> datetime | None:
    """An RFC 3339 time in UTC ("2026-11-25T18:00:00Z"), or null."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not RFC3339_UTC.fullmatch(value):
        raise ApiError(
            422,
            "invalid_body",
            f"{field} must be an RFC 3339 time in UTC, like 2026-11-25T18:00:00Z",
        )
    try:
        return datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(422, "invalid_body", f"{field} is not a valid time: {exc}") from exc


def path_item_id(request: web.Request) -> str:
    item_id = request.match_info["item_id"]
    if not ITEM_ID_PATTERN.fullmatch(item_id):
        raise ApiError(400, "invalid_item_id", "item ids are 1-64 characters of A-Z a-z 0-9 . _ -")
    return item_id


def path_purchase_id(request: web.Request) -> str | None:
    """None for an id that cannot exist (answered 404 like any unknown purchase)."""
    purchase_id = request.match_info["purchase_id"]
    return purchase_id if PURCHASE_ID_PATTERN.fullmatch(purchase_id) else None


def idempotency_key(request: web.Request) -> str:
    values = request.headers.getall("Idempotency-Key", [])
    if not values:
        raise ApiError(400, "missing_idempotency_key", "the Idempotency-Key header is required")
    if len(values) > 1:
        raise ApiError(400, "invalid_idempotency_key", "send one Idempotency-Key header")
    key = values[0]
    printable = all(33 <= ord(ch) <= 126 or ch == " " for ch in key)
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS or not printable or key.strip() != key:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII characters",
        )
    return key


def wait_seconds(request: web.Request) -> float:
    raw = request.query.getall("wait", [])
    if not raw:
        return 0.0
    try:
        if len(raw) > 1:
            raise ValueError("repeated")
        value = float(raw[0])
    except ValueError as exc:
        raise ApiError(400, "invalid_wait", "wait must be a number of seconds, 0-30") from exc
    if not math.isfinite(value) or not 0 <= value <= WAIT_MAX_S:
        raise ApiError(400, "invalid_wait", "wait must be a number of seconds, 0-30")
    return value
