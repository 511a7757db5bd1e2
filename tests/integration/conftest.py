"""A live stack for end-to-end tests: real gateway and consumer processes."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from infra.embedded.proc import free_port, terminate_pid, wait_until
from infra.processes import start_consumer, start_gateway
from services.resources import CoreResources
from services.settings import Settings
from services.tokens import issue_token


@dataclass
class LiveStack:
    settings: Settings
    url: str
    gateway_pids: list[int]
    consumer_pids: list[int]

    def user_headers(self, user_id: str, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {issue_token(self.settings.secret, user_id, 3600)}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.admin_token}"}


@pytest.fixture(scope="session")
def live(settings: Settings, core: CoreResources) -> Iterator[LiveStack]:
    """Two consumers and one gateway, started once for the session."""
    live_settings = settings.replace(gateway_port=free_port())
    logs = settings.state_dir / "logs"
    consumers = [start_consumer(live_settings, logs, f"live-consumer-{n}") for n in range(2)]
    gateway = start_gateway(live_settings, logs)
    stack = LiveStack(
        live_settings, f"http://127.0.0.1:{live_settings.gateway_port}", [gateway], consumers
    )
    try:
        wait_until_certain(stack, logs / "gateway-0.log")
        yield stack
    finally:
        for pid in [gateway, *consumers]:
            terminate_pid(pid, grace_s=10)


def wait_until_certain(stack: LiveStack, log: Path) -> None:
    """Until the consumers passed the fence of Redis' incarnation (gateway/lookups.py),
    a purchase id nobody bought answers 503, not 404: tests that ask for one start
    after that."""
    url = f"{stack.url}/v1/purchases/p_{'0' * 32}"

    def answers_404() -> bool:
        request = urllib.request.Request(url, headers=stack.user_headers("nobody"))
        try:
            with urllib.request.urlopen(request, timeout=5):
                return False
        except urllib.error.HTTPError as answer:
            return answer.code == 404
        except OSError:
            return False

    wait_until(answers_404, "a certain 404 for an unknown purchase", log, timeout_s=60)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session
