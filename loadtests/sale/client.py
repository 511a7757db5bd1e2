"""The gateway as the in-process load drivers call it (the chaos workload, the
fault tests' traffic, the demo's sale): api.md over one aiohttp session, each
user's token signed once, and no exception for a call that got no answer."""

from __future__ import annotations

from typing import Any

import aiohttp

from loadtests.sale.target import Target
from services.tokens import issue_token

NO_ANSWER = 0  # connection refused, reset or timed out: the outcome is unknown
MAX_RETRY_AFTER_S = 2.0
TOKEN_TTL_S = 3600


class GatewayClient:
    """HTTP calls that never raise: no answer is status 0 (NO_ANSWER) with an empty body."""

    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self.session = session
        self.target = target
        self._tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = issue_token(self.target.secret, user, TOKEN_TTL_S)
        return self._tokens[user]

    async def call(
        self, method: str, path: str, token: str | None, timeout_s: float, **extra: Any
    ) -> tuple[int, dict[str, Any], float]:
        """(status, body, seconds the answer asks us to wait before retrying); with
        no token, an anonymous call (GET /v1/items/{id})."""
        auth = {} if token is None else {"Authorization": f"Bearer {token}"}
        headers = {**auth, **extra.pop("headers", {})}
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        url = f"{self.target.gateway_url}{path}"
        try:
            async with self.session.request(
                method, url, headers=headers, timeout=timeout, **extra
            ) as response:
                body = await response.json(content_type=None)
                retry_after = _seconds(response.headers.get("Retry-After"))
                return response.status, body if isinstance(body, dict) else {}, retry_after
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return NO_ANSWER, {}, 0.0


def _seconds(header: str | None) -> float:
    try:
        return min(float(header or 0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0
