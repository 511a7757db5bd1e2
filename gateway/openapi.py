"""The OpenAPI 3 description of every route of api.md."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.validation import IDEMPOTENCY_KEY_MAX_CHARS, MAX_INT, WAIT_MAX_S


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "bad request",
        401: "missing, malformed, forged or expired token",
        403: "not allowed for this token",
        404: "not found",
        409: "conflict",
        413: "body too large",
        415: "body is not application/json",
        422: "invalid body",
        429: "rate limited",
        503: "a backing service is unavailable",
    }
    return {str(status): _error(text[status]) for status in statuses}


def _purchase_errors(*statuses: int) -> dict[str, Any]:
    """A purchase's routes: 404 only when true; 503 also while it cannot be told."""
    return _errors(*statuses) | {
        "404": _error("someone else's purchase, or certainly never accepted"),
        "503": _error(
            "a backing service is unavailable, or Redis lost data and the consumers have not"
            " passed its fence yet, so whether it was accepted cannot be told: retry after"
            " Retry-After (never 404 for an accepted purchase)"
        ),
    }


ITEM_ID = {
    "name": "item_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
PURCHASE_ID = {"name": "purchase_id", "in": "path", "required": True, "schema": {"type": "string"}}
JSON_BODY = "application/json"

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    },
    "ItemSpec": {
        "type": "object",
        "required": ["stock"],
        "additionalProperties": False,
        "properties": {
            "stock": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
            "per_user_limit": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
            "starts_at": {"type": ["string", "null"], "format": "date-time"},
            "ends_at": {"type": ["string", "null"], "format": "date-time"},
            "hold_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 86400},
        },
    },
    "Item": {
        "type": "object",
        "required": [
            "item_id",
            "stock",
            "sold",
            "remaining",
            "per_user_limit",
            "starts_at",
            "ends_at",
            "hold_s",
        ],
        "properties": {
            "item_id": {"type": "string"},
            "stock": {"type": "integer"},
            "sold": {"type": "integer"},
            "remaining": {"type": "integer"},
            "per_user_limit": {"type": "integer"},
            "starts_at": {"type": ["string", "null"], "format": "date-time"},
            "ends_at": {"type": ["string", "null"], "format": "date-time"},
            "hold_s": {"type": ["integer", "null"]},
        },
    },
    "PurchaseRequest": {
        "type": "object",
        "required": ["item_id"],
        "additionalProperties": False,
        "properties": {
            "item_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["purchase_id", "status"],
        "properties": {
            "purchase_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending"]},
        },
    },
    "Purchase": {
        "type": "object",
        "required": ["purchase_id", "item_id", "quantity", "status", "reason", "pay_by"],
        "properties": {
            "purchase_id": {"type": "string"},
            "item_id": {"type": "string"},
            "quantity": {"type": "integer"},
            "status": {
                "type": "string",
                "enum": ["pending", "confirmed", "rejected", "cancelled", "paid", "expired"],
            },
            "reason": {"type": ["string", "null"]},
            "pay_by": {"type": ["string", "null"], "format": "date-time"},
        },
    },
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON_BODY: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _view(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    """A public view, limited per client address (429)."""
    return {"get": {"summary": summary, "responses": {**responses, **_errors(429)}}}


PATHS: dict[str, Any] = {
    "/v1/items/{item_id}": {
        "put": {
            "summary": "Create or update an item (admin)",
            "security": [{"admin": []}],
            "parameters": [ITEM_ID],
            "requestBody": {
                "required": True,
                "content": {JSON_BODY: {"schema": {"$ref": "#/components/schemas/ItemSpec"}}},
            },
            "responses": {
                "200": _json("Item", "updated"),
                "201": _json("Item", "created"),
                **_errors(400, 401, 403, 409, 413, 415, 422, 503),
            },
        },
        "get": {
            "summary": "Stock, sold and remaining, from Postgres",
            "parameters": [ITEM_ID],
            "responses": {"200": _json("Item", "the item"), **_errors(400, 404, 429, 503)},
        },
    },
    "/v1/purchases": {
        "post": {
            "summary": "Ask to buy; answered 202 with a purchase id to poll",
            "security": [{"user": []}],
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": IDEMPOTENCY_KEY_MAX_CHARS,
                        # Printable ASCII, no space at either end (gateway/validation.py).
                        "pattern": "^[!-~]([ -~]*[!-~])?$",
                    },
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    JSON_BODY: {"schema": {"$ref": "#/components/schemas/PurchaseRequest"}}
                },
            },
            "responses": {
                "202": {
                    **_json("Accepted", "admitted"),
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
                **_errors(400, 401, 404, 409, 413, 415, 422, 429, 503),
            },
        },
    },
    "/v1/purchases/{purchase_id}": {
        "get": {
            "summary": "A purchase's state; wait holds the answer until it is final",
            "security": [{"user": []}],
            "parameters": [
                PURCHASE_ID,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0, "maximum": WAIT_MAX_S},
                },
            ],
            "responses": {
                "200": _json("Purchase", "the purchase"),
                **_purchase_errors(400, 401, 404, 429, 503),
            },
        },
    },
    "/v1/purchases/{purchase_id}/cancel": {
        "post": {
            "summary": "Cancel a confirmed purchase (owner or admin); its units go back on sale",
            "security": [{"user": []}, {"admin": []}],
            "parameters": [
                PURCHASE_ID,
            ],
            "responses": {
                "200": _json("Purchase", "the purchase, now cancelled"),
                **_purchase_errors(401, 404, 409, 429, 503),
            },
        },
    },
    "/v1/purchases/{purchase_id}/pay": {
        "post": {
            "summary": (
                "Mark a confirmed purchase of an item with hold_s paid (admin: the payment"
                " system). Idempotent. 409 expired after pay_by, not_final while pending,"
                " not_on_hold for an item without a hold, not_payable when cancelled or rejected"
            ),
            "security": [{"admin": []}],
            "parameters": [
                PURCHASE_ID,
            ],
            "responses": {
                "200": _json("Purchase", "the purchase, now paid"),
                **_purchase_errors(401, 403, 404, 409, 429, 503),
            },
        },
    },
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
    "/readyz": _view(
        "Readiness: Redis, Kafka and Postgres answer",
        {"200": {"description": "ready"}, "503": {"description": "not ready"}},
    ),
    "/metrics": _view(
        "Prometheus metrics",
        {"200": {"description": "text exposition format", "content": {"text/plain": {}}}},
    ),
    "/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
    },
    "/dashboard": {
        "get": {
            "summary": "Live dashboard: items, answer rates, consumer lag (no user data)",
            "responses": {"200": {"description": "an HTML page", "content": {"text/html": {}}}},
        }
    },
    "/dashboard.json": _view(
        "What the dashboard shows, rebuilt at most once a second",
        {"200": {"description": "items, rates_per_s, partitions"}},
    ),
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "flashsale gateway", "version": "0.1.0"},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "admin token"},
                "user": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "user id signed with HMAC-SHA256 (flashsale token)",
                },
            },
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
