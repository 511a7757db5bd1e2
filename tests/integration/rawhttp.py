"""Raw HTTP/1.1 requests with exact bytes: headers and bodies no client library would send."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

TIMEOUT_S = 10.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, bytes | str]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    all_headers = list(headers or [])
    if body or method in ("POST", "PUT"):
        all_headers.append(("Content-Length", str(len(body))))
    request = request_head(method, path, all_headers) + body
    return raw_exchange(port, [request])


def request_head(
    method: str, path: str, headers: list[tuple[str, bytes | str]] | None = None
) -> bytes:
    """The request line and headers as given (no Content-Length added), with the blank line."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in headers or []:
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunks(*parts: bytes) -> list[bytes]:
    """A chunked transfer-coding body: one chunk per part, then the last chunk."""
    return [b"%x\r\n%s\r\n" % (len(part), part) for part in parts] + [b"0\r\n\r\n"]


def raw_exchange(port: int, writes: list[bytes], pause_s: float = 0.0) -> RawResponse:
    """Send each of `writes` in its own TCP segment, `pause_s` apart, then read the answer.

    The pause lets the server read what came so far before the next part arrives, as
    a client that writes headers and body separately makes it do.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index, data in enumerate(writes):
            if index and pause_s:
                time.sleep(pause_s)
            sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return _parse(b"".join(chunks))


def _parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)
