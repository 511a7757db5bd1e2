"""User tokens: the user id and an expiry, signed with HMAC-SHA256 by the gateway's secret.

Format: base64url(user_id) "." expiry_unix_s "." hex(hmac(secret, payload)).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from services.errors import FlashsaleError

MAX_USER_ID_CHARS = 64


class TokenError(FlashsaleError):
    """The token is missing, malformed, forged or expired."""


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode()).decode()


def _signature(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def valid_user_id(user_id: str) -> bool:
    return 0 < len(user_id) <= MAX_USER_ID_CHARS and user_id.isprintable()


def issue_token(secret: str, user_id: str, ttl_s: int, now_s: float | None = None) -> str:
    if not valid_user_id(user_id):
        raise TokenError(f"user id must be 1-{MAX_USER_ID_CHARS} printable characters")
    expires = int((time.time() if now_s is None else now_s) + ttl_s)
    payload = f"{_b64(user_id)}.{expires}"
    return f"{payload}.{_signature(secret, payload)}"


def verify_token(secret: str, token: str, now_s: float | None = None) -> str:
    """The user id the token names; TokenError when it is not valid now."""
    # A token is ASCII by construction; anything else (a header's non-ASCII bytes
    # arrive as surrogates) would make encode() or compare_digest raise instead.
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        raise TokenError("malformed token")
    encoded_user, expires_text, signature = parts
    payload = f"{encoded_user}.{expires_text}"
    if not hmac.compare_digest(_signature(secret, payload), signature):
        raise TokenError("bad token signature")
    try:
        expires = int(expires_text)
        user_id = _unb64(encoded_user)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenError("malformed token") from exc
    if expires < (time.time() if now_s is None else now_s):
        raise TokenError("token expired")
    if not valid_user_id(user_id):
        raise TokenError("malformed token")
    return user_id
