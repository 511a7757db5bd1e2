"""The listener loop shared by the gateway's push channels: retry after a loss, stop on request."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.reconnect import listening


async def test_a_lost_connection_is_logged_and_retried_until_the_block_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []
    listening_again = asyncio.Event()

    async def listen_once(stop: asyncio.Event) -> None:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ConnectionResetError("lost")
        listening_again.set()
        await stop.wait()

    log = logging.getLogger("tests.reconnect")
    with caplog.at_level(logging.WARNING, logger="tests.reconnect"):
        async with listening(listen_once, (ConnectionResetError,), "test listener", log, 0.01):
            await asyncio.wait_for(listening_again.wait(), timeout=10)
    assert attempts == [0, 1]
    assert "test listener disconnected: lost" in caplog.text


async def test_an_error_it_was_not_told_about_is_not_swallowed() -> None:
    entered = asyncio.Event()

    async def listen_once(stop: asyncio.Event) -> None:
        entered.set()
        raise ValueError("a bug")

    log = logging.getLogger("tests.reconnect")
    with pytest.raises(ValueError, match="a bug"):
        async with listening(listen_once, (ConnectionResetError,), "test listener", log, 0.01):
            await asyncio.wait_for(entered.wait(), timeout=10)
