"""The client address that per-address rate limits count: the TCP peer, or behind
a trusted proxy the client the proxy names in X-Forwarded-For.

Anybody can send X-Forwarded-For, so the header is believed only from a peer in
FLASHSALE_TRUSTED_PROXIES, and then read as nginx's `real_ip_recursive on` does:
from the right (each proxy appends the address it saw), skipping addresses that
are themselves trusted proxies; the first one that is not is the client. What a
client wrote into the header itself lies to the left of that and is never read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
FORWARDED_FOR = "X-Forwarded-For"
UNKNOWN = "unknown"


class ClientAddresses:
    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self.trusted = tuple(trusted)

    def of(self, request: web.Request) -> str:
        if not self.trusted:
            return request.remote or UNKNOWN  # nothing to parse on the hot path
        return self.resolve(request.remote, request.headers.getall(FORWARDED_FOR, []))

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        """The client, from the peer's address and the X-Forwarded-For headers in order."""
        peer_address = parse_address(peer or "")
        if peer_address is None:
            return peer or UNKNOWN
        client = peer_address
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        while self.is_trusted(client) and hops:
            named = parse_address(hops.pop())
            if named is None:
                break  # garbage a trusted proxy passed on: the last proxy is the client
            client = named
        return str(client)

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)


def parse_address(text: str) -> IPAddress | None:
    """An address as a peer or a proxy writes it: bare, `[v6]:port` or `v4:port`;
    an IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
