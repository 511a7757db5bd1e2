"""The admin API as the load drivers call it: the one way they put an item on sale."""

from __future__ import annotations

import aiohttp

from loadtests.sale.target import Target
from services.errors import FlashsaleError


class ItemNotCreatedError(FlashsaleError):
    """The admin API answered a PUT /v1/items/{id} with neither 200 nor 201."""


def admin_headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.admin_token}"}


async def create_item(
    session: aiohttp.ClientSession,
    target: Target,
    item_id: str,
    stock: int,
    per_user_limit: int = 1,
    **terms: object,
) -> dict[str, object]:
    """PUT /v1/items/{id} with the admin token, as an operator does; `terms` are
    the optional fields of api.md (starts_at, hold_s...)."""
    async with session.put(
        f"{target.gateway_url}/v1/items/{item_id}",
        json={"stock": stock, "per_user_limit": per_user_limit, **terms},
        headers=admin_headers(target),
    ) as response:
        body: dict[str, object] = await response.json()
        if response.status not in (200, 201):
            raise ItemNotCreatedError(f"creating {item_id} failed: {response.status} {body}")
        return body
