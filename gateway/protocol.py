"""Errors that aiohttp answers itself, before any handler or middleware runs.

The HTTP parser refuses bytes that HTTP forbids (a control character in a
header, a malformed Content-Length, a broken request line) and
`RequestHandler.handle_error` answers them in plain text. api.md promises the
JSON error body for every error, and aiohttp offers no hook for these answers
(aio-libs/aiohttp#3287), so the runner hands each connection a handler whose
`handle_error` answers JSON.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import HTTP_CODES, error_response

DETAIL_MAX_CHARS = 200


def protocol_error_detail(status: int, message: str | None) -> str:
    if status >= 500:
        return "internal error"  # never a traceback, whatever aiohttp's debug says
    # The parser's first line names the fault; the rest echoes the offending bytes.
    lines = (message or "").strip().splitlines()
    reason = lines[0].strip(" :")[:DETAIL_MAX_CHARS] if lines else ""
    return f"malformed HTTP request: {reason}" if reason else "malformed HTTP request"


class JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The parent logs, and raises when part of a response was already sent.
        super().handle_error(request, status, exc, message)
        code = HTTP_CODES.get(status, "error")
        response = error_response(status, code, protocol_error_detail(status, message))
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors with api.md's JSON body."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object, same state: only the per-connection handler class differs.
        server.__class__ = JsonErrorServer
        return server
