"""Every public route flooded at once through a real gateway process: purchases are
still answered, the gateway's Postgres pool is never all busy, and it opens no
broker connection for the flood (issue 24 item 1: 5 waves of 300 concurrent GET
/dashboard.json took its broker connections from 3 to 57)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from urllib.parse import urlsplit

import aiohttp
import psutil

from services.resources import CoreResources
from services.settings import Settings
from tests.conftest import fresh_id
from tests.integration.conftest import LiveStack
from tests.integration.test_trusted_proxies import own_gateway, put_item

CONCURRENCY = 300
PER_ROUTE = 300
PURCHASES = 20
SAMPLE_EVERY = 50
SCRAPER = "192.0.2.99"
# Per minute, so the flood meets both limits however slow the machine is (900
# lookups, 900 views), and the lookups it lets through come as one burst.
LOOKUP_RATE = "300/minute"
VIEW_RATE = "120/minute"
ANSWERS = {
    "item": {200, 429},
    "unknown item": {404, 429},
    "purchase": {404, 429},
    "cancel": {404, 429},
    "dashboard": {200, 429},
    "metrics": {200, 429},
    "readyz": {200, 429},
}


def established_to(pid: int, port: int) -> list[int]:
    """The local ports of the process's established TCP connections to `port`."""
    return [
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    ]


def port_of(address: str) -> int:
    port = urlsplit(address if "//" in address else f"//{address}").port
    assert port is not None
    return port


class Flood:
    """The requests of every public route, round robin, CONCURRENCY at a time."""

    def __init__(self, http: aiohttp.ClientSession, gw: LiveStack, item_id: str) -> None:
        self.http, self.gw, self.item_id = http, gw, item_id
        self.answers: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        self.broker_port = port_of(gw.settings.kafka_bootstrap)
        # The local ports of the gateway's broker connections, every SAMPLE_EVERY
        # answers: a connection opened (or reopened) meanwhile has a port of its own.
        self.broker_ports_seen: set[int] = set()
        self.answered = 0

    def request(self, route: str) -> tuple[str, str, dict[str, str]]:
        user = self.gw.user_headers("flooder")
        unknown = f"p_{secrets.token_hex(8)}"
        return {
            "item": ("GET", f"/v1/items/{self.item_id}", {}),
            "unknown item": ("GET", f"/v1/items/{fresh_id('nothing')}", {}),
            "purchase": ("GET", f"/v1/purchases/{unknown}", user),
            "cancel": ("POST", f"/v1/purchases/{unknown}/cancel", user),
            "dashboard": ("GET", "/dashboard.json", {}),
            "metrics": ("GET", "/metrics", {}),
            "readyz": ("GET", "/readyz", {}),
        }[route]

    async def send(self, route: str) -> None:
        method, path, headers = self.request(route)
        async with self.http.request(method, self.gw.url + path, headers=headers) as response:
            await response.read()
            if response.status == 429:
                assert int(response.headers["Retry-After"]) >= 1
            self.answers[route][response.status] += 1
        self.answered += 1
        if self.answered % SAMPLE_EVERY == 0:
            pid = self.gw.gateway_pids[0]
            self.broker_ports_seen.update(established_to(pid, self.broker_port))

    async def run(self) -> None:
        routes = itertools.islice(itertools.cycle(ANSWERS), PER_ROUTE * len(ANSWERS))
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(route: str) -> None:
            async with gate:
                await self.send(route)

        await asyncio.gather(*(one(route) for route in routes))


async def buy_during(http: aiohttp.ClientSession, gw: LiveStack, item_id: str) -> list[int]:
    statuses = []
    for _ in range(PURCHASES):
        headers = gw.user_headers(fresh_id("flood-buyer"), secrets.token_hex(8))
        async with http.post(
            f"{gw.url}/v1/purchases", json={"item_id": item_id}, headers=headers
        ) as response:
            statuses.append(response.status)
    return statuses


async def pool_exhaustions(http: aiohttp.ClientSession, gw: LiveStack) -> float:
    """The gateway's count of Postgres acquires that found its pool all busy."""

    # Another client (the gateway trusts 127.0.0.1 as a proxy) than the flood's:
    # its view limit is its own.
    headers = {"X-Forwarded-For": SCRAPER}
    async with http.get(f"{gw.url}/metrics", headers=headers) as response:
        assert response.status == 200
        text = await response.text()
    (line,) = [x for x in text.splitlines() if x.startswith("flashsale_db_pool_exhausted_total")]
    return float(line.split()[-1])


async def test_a_flood_of_every_public_route_stays_bounded(
    settings: Settings, core: CoreResources
) -> None:
    with own_gateway(
        settings, lookup_rate=LOOKUP_RATE, view_rate=VIEW_RATE, trusted_proxies="127.0.0.1"
    ) as gw:
        pid = gw.gateway_pids[0]
        connector = aiohttp.TCPConnector(limit=CONCURRENCY + 10)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            item_id = await put_item(http, gw, stock=PURCHASES * 2)
            flood = Flood(http, gw, item_id)
            for route in ANSWERS:  # every route once: its connections are open now
                await flood.send(route)
            assert await buy_during(http, gw, item_id) == [202] * PURCHASES
            brokers_before = set(established_to(pid, flood.broker_port))
            exhausted_before = await pool_exhaustions(http, gw)
            flooding = asyncio.ensure_future(flood.run())
            bought = await buy_during(http, gw, item_id)
            await flooding
            exhausted_after = await pool_exhaustions(http, gw)
            brokers_after = set(established_to(pid, flood.broker_port))
    assert bought == [202] * PURCHASES  # the sale goes on
    for route, allowed in ANSWERS.items():
        assert set(flood.answers[route]) <= allowed, (route, flood.answers[route])
    # Both limits bit, and each route still served some.
    assert flood.answers["purchase"][429] > 0 and flood.answers["dashboard"][429] > 0
    assert all(min(flood.answers[route]) < 429 for route in ANSWERS)
    assert exhausted_after == exhausted_before  # nobody ever waited for a connection
    assert brokers_before  # the producer's, the end offsets' client's
    assert flood.broker_ports_seen == brokers_after == brokers_before
