"""Request text in log lines cannot forge lines of its own (issue 9, finding 17)."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.errors import error_middleware
from services.errors import UnavailableError

FORGED_PATH = "/v1/purchases/x%0A2030-01-01 00:00:00 INFO forged line%0D%1B[2J"


async def _unavailable(request: web.Request) -> web.StreamResponse:
    raise UnavailableError("redis unavailable: ConnectionError")


async def _crash(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("boom")


@pytest.mark.parametrize(("handler", "status"), [(_unavailable, 503), (_crash, 500)])
async def test_logged_paths_hold_no_line_breaks(
    caplog: pytest.LogCaptureFixture, handler: object, status: int
) -> None:
    request = make_mocked_request("GET", FORGED_PATH)
    assert "\n" in request.path  # aiohttp decodes %0A: the text that was logged as is
    with caplog.at_level(logging.WARNING, logger="gateway.errors"):
        response = await error_middleware(request, handler)  # type: ignore[arg-type]
    assert response.status == status
    assert isinstance(response, web.Response) and response.text is not None
    assert json.loads(response.text)["error"] in {"unavailable", "internal"}
    records = [r for r in caplog.records if r.name == "gateway.errors"]
    assert records
    for record in records:
        message = record.getMessage()
        assert "forged line" in message  # still there, for the operator to see
        assert not any(ch in message for ch in "\n\r\x1b"), message
