"""Per-address limits behind a proxy, through a real gateway process: the client
named in X-Forwarded-For counts only when the peer is a trusted proxy."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import aiohttp

from infra.embedded.proc import free_port, terminate_pid
from infra.processes import start_gateway
from services.resources import CoreResources
from services.settings import Settings
from tests.conftest import fresh_id
from tests.integration.conftest import LiveStack

# Each gateway here has rates of its own (per hour: a window that turns mid-test
# would let one more through): limits keys its counters by the rate too,
# so no other test's requests from 127.0.0.1 count against them.
LOOKUPS = 6
PURCHASES = 4


@contextlib.contextmanager
def own_gateway(settings: Settings, **overrides: object) -> Iterator[LiveStack]:
    """A gateway process of its own (the `core` fixture migrated the database)."""
    gateway_settings = settings.replace(gateway_port=free_port(), **overrides)
    pid = start_gateway(
        gateway_settings, settings.state_dir / "logs", index=gateway_settings.gateway_port
    )
    try:
        yield LiveStack(
            gateway_settings, f"http://127.0.0.1:{gateway_settings.gateway_port}", [pid], []
        )
    finally:
        terminate_pid(pid, grace_s=10)


async def lookup(http: aiohttp.ClientSession, gw: LiveStack, forwarded_for: str) -> int:
    """GET /v1/purchases/{unknown id}: a lookup every time (404), or 429."""
    headers = {**gw.user_headers("proxy-user"), "X-Forwarded-For": forwarded_for}
    url = f"{gw.url}/v1/purchases/p_{secrets.token_hex(8)}"
    async with http.get(url, headers=headers) as response:
        if response.status == 429:
            assert response.headers["X-RateLimit-Scope"] == "lookup"
            assert int(response.headers["Retry-After"]) >= 1
        return response.status


async def buy(http: aiohttp.ClientSession, gw: LiveStack, item_id: str, forwarded_for: str) -> int:
    headers = {
        **gw.user_headers(fresh_id("proxy-buyer"), secrets.token_hex(8)),
        "X-Forwarded-For": forwarded_for,
    }
    async with http.post(
        f"{gw.url}/v1/purchases", json={"item_id": item_id}, headers=headers
    ) as response:
        if response.status == 429:
            assert response.headers["X-RateLimit-Scope"] == "client"
        return response.status


async def put_item(http: aiohttp.ClientSession, gw: LiveStack, stock: int) -> str:
    item_id = fresh_id("proxied")
    async with http.put(
        f"{gw.url}/v1/items/{item_id}", json={"stock": stock}, headers=gw.admin_headers
    ) as response:
        assert response.status == 201
    return item_id


async def test_a_spoofed_header_from_an_untrusted_peer_does_not_escape_the_limit(
    settings: Settings, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    # A proxy is trusted, but not the test's own address (127.0.0.1).
    with own_gateway(
        settings,
        trusted_proxies="192.0.2.0/24",
        lookup_rate=f"{LOOKUPS}/hour",
        client_rate=f"{PURCHASES}/hour",
    ) as gw:
        spoofed = [await lookup(http, gw, f"198.51.100.{n}") for n in range(LOOKUPS + 1)]
        assert spoofed == [404] * LOOKUPS + [429]
        # Naming a trusted proxy as the sender changes nothing either.
        assert await lookup(http, gw, "198.51.100.77, 192.0.2.1") == 429
        item_id = await put_item(http, gw, stock=50)
        bought = [await buy(http, gw, item_id, f"203.0.113.{n}") for n in range(PURCHASES + 1)]
        assert bought == [202] * PURCHASES + [429]


async def test_the_clients_a_trusted_proxy_forwards_get_limits_of_their_own(
    settings: Settings, core: CoreResources, http: aiohttp.ClientSession
) -> None:
    with own_gateway(
        settings,
        trusted_proxies="127.0.0.1/32",
        lookup_rate=f"{LOOKUPS + 1}/hour",
        client_rate=f"{PURCHASES + 1}/hour",
    ) as gw:
        first, second = "198.51.100.1", "198.51.100.2"
        answers = [await lookup(http, gw, first) for _ in range(LOOKUPS + 2)]
        assert answers == [404] * (LOOKUPS + 1) + [429]
        assert await lookup(http, gw, second) == 404  # another client behind the same proxy
        # What the client wrote itself, left of what the proxy appended, is not read.
        assert await lookup(http, gw, f"6.6.6.6, {first}") == 429
        # The proxy's own address (trusted) is skipped: the client is the hop before it.
        assert await lookup(http, gw, f"{first}, 127.0.0.1") == 429
        item_id = await put_item(http, gw, stock=50)
        bought = [await buy(http, gw, item_id, first) for _ in range(PURCHASES + 2)]
        assert bought == [202] * (PURCHASES + 1) + [429]
        assert await buy(http, gw, item_id, second) == 202
