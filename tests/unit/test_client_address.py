"""The client address per-address limits count (gateway/clientaddr.py): the
header is believed only from a trusted proxy, read from the right."""

from __future__ import annotations

import pytest

from gateway.clientaddr import ClientAddresses, parse_address
from services.errors import SettingsError
from services.settings import Settings

PROXIES = "10.0.0.0/8, 192.168.1.7"


def addresses(trusted: str = PROXIES) -> ClientAddresses:
    return ClientAddresses(
        Settings.from_env({"FLASHSALE_TRUSTED_PROXIES": trusted}).trusted_networks()
    )


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    resolve = addresses().resolve
    assert resolve("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"
    assert resolve("203.0.113.9", ["10.1.1.1"]) == "203.0.113.9"  # naming a proxy changes nothing
    assert resolve("203.0.113.9", []) == "203.0.113.9"


def test_nothing_trusted_means_the_header_is_never_read() -> None:
    assert addresses("").resolve("10.1.1.1", ["198.51.100.1"]) == "10.1.1.1"


def test_a_trusted_peer_names_the_right_most_untrusted_address() -> None:
    resolve = addresses().resolve
    assert resolve("10.0.0.2", ["198.51.100.1"]) == "198.51.100.1"
    # The client wrote "6.6.6.6" itself; its proxy appended what it saw.
    assert resolve("10.0.0.2", ["6.6.6.6, 198.51.100.1"]) == "198.51.100.1"
    # Two proxies: the outer one (trusted) is skipped, the hop before it is the client.
    assert resolve("10.0.0.2", ["6.6.6.6, 198.51.100.1, 192.168.1.7"]) == "198.51.100.1"
    # Several header lines are one list, in order.
    assert resolve("10.0.0.2", ["6.6.6.6", "198.51.100.1", "10.9.9.9"]) == "198.51.100.1"


def test_a_chain_of_trusted_addresses_ends_at_the_left_most() -> None:
    assert addresses().resolve("10.0.0.2", ["10.3.3.3, 10.4.4.4"]) == "10.3.3.3"


def test_a_trusted_peer_without_the_header_is_the_client() -> None:
    assert addresses().resolve("10.0.0.2", []) == "10.0.0.2"


def test_garbage_in_the_chain_stops_the_walk_at_the_last_address_read() -> None:
    resolve = addresses().resolve
    assert resolve("10.0.0.2", ["198.51.100.1, not-an-address"]) == "10.0.0.2"
    assert resolve("10.0.0.2", ["not-an-address, 198.51.100.1"]) == "198.51.100.1"
    assert resolve("10.0.0.2", ["10.5.5.5, unknown, 10.4.4.4"]) == "10.4.4.4"


def test_addresses_as_proxies_write_them() -> None:
    assert str(parse_address("198.51.100.1:4711")) == "198.51.100.1"
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    assert str(parse_address(" 2001:db8::1 ")) == "2001:db8::1"
    assert str(parse_address("::ffff:10.0.0.2")) == "10.0.0.2"  # a dual-stack listener's peer
    assert parse_address("") is None
    assert parse_address("_hidden") is None


def test_ipv6_proxies_and_clients() -> None:
    resolve = addresses("fd00::/8").resolve
    assert resolve("fd00::5", ["2001:db8::1"]) == "2001:db8::1"
    assert resolve("2001:db8::2", ["2001:db8::1"]) == "2001:db8::2"


def test_a_peer_that_is_no_address_is_kept_as_it_is() -> None:
    assert addresses().resolve(None, ["198.51.100.1"]) == "unknown"


@pytest.mark.parametrize("trusted", ["10.0.0.0/33", "nginx", "10.0.0.0/8,,300.1.1.1"])
def test_a_bad_cidr_is_refused_at_startup(trusted: str) -> None:
    with pytest.raises(SettingsError, match="FLASHSALE_TRUSTED_PROXIES"):
        Settings.from_env({"FLASHSALE_TRUSTED_PROXIES": trusted})
