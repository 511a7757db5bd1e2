"""Bearer tokens: the admin token from settings, user tokens signed by the gateway's secret."""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.errors import ApiError
from services.tokens import TokenError, verify_token

BEARER = "Bearer "


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    if not header.startswith(BEARER) or not header[len(BEARER) :].strip():
        raise ApiError(
            401, "unauthorized", "malformed Authorization header", {"WWW-Authenticate": "Bearer"}
        )
    return header[len(BEARER) :].strip()


def require_user(request: web.Request, secret: str) -> str:
    """The user id the token names; 401 when missing, malformed, forged or expired."""
    token = _bearer(request)
    try:
        return verify_token(secret, token)
    except TokenError as exc:
        raise ApiError(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"}) from exc


def _same_secret(given: str, expected: str) -> bool:
    # Header bytes that are not UTF-8 arrive as surrogates: encode them back, never raise.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def require_admin(request: web.Request, admin_token: str, secret: str) -> None:
    token = _bearer(request)
    if admin_token and _same_secret(token, admin_token):
        return
    try:
        verify_token(secret, token)
    except TokenError as exc:
        raise ApiError(
            401, "invalid_token", "not a valid admin token", {"WWW-Authenticate": "Bearer"}
        ) from exc
    raise ApiError(403, "forbidden", "this route needs the admin token")


def require_user_or_admin(request: web.Request, admin_token: str, secret: str) -> str | None:
    """The caller's user id, or None for the admin token; 401 for anything else."""
    token = _bearer(request)
    if admin_token and _same_secret(token, admin_token):
        return None
    return require_user(request, secret)
