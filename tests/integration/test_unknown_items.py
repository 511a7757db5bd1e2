"""Unknown item ids are remembered as absent, and forgotten on every gateway the
moment an admin writes the item."""

from __future__ import annotations

import aiohttp

from services.resources import CoreResources
from services.settings import Settings
from tests.conftest import fresh_id, wait_for
from tests.integration.conftest import LiveStack
from tests.integration.test_trusted_proxies import own_gateway

# Long enough that only the admin write's announcement can end it within the test.
NEGATIVE_CACHE_S = 3600.0


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


async def test_an_admin_write_on_one_gateway_clears_the_absence_another_cached(
    settings: Settings, core: CoreResources, live: LiveStack, http: aiohttp.ClientSession
) -> None:
    item_id = fresh_id("later")
    with own_gateway(settings, item_cache_s=NEGATIVE_CACHE_S) as other:
        url = f"{other.url}/v1/items/{item_id}"
        assert await status_of(http, url) == 404  # now cached as absent for an hour
        async with http.put(
            f"{live.url}/v1/items/{item_id}", json={"stock": 3}, headers=live.admin_headers
        ) as response:
            assert response.status == 201

        async def found() -> bool:
            return await status_of(http, url) == 200

        assert await wait_for(found, timeout_s=15)
