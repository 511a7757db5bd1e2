"""A private network on this machine for partition faults (root only).

The lock articles start from a network that splits: a lock holder, or here a
consumer, cut off from the broker while it can still reach the database, or the
reverse. Processes on one loopback cannot be split, so the lab gives each
consumer a network namespace of its own, joined by a veth pair to a bridge in
the host namespace. Postgres, Redis and the broker each listen on an address of
their own on that bridge, so a fault can cut one service and leave the others.

A cut is silent, as a real one is: inside the consumer's namespace, the
service's address is pinned to a MAC that no port has, so frames go nowhere and
TCP just stops hearing back (no reset, no "unreachable"). Healing deletes the
pin and ARP finds the real bridge again. A slow link is a token bucket (`tc
tbf`) on the namespace's side of the veth; this machine's kernel has `tbf` but
neither `netem` nor any packet classifier, which is why cuts are made with the
neighbour table instead of `tc` filters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from services.errors import ServiceStartError

log = logging.getLogger(__name__)

SERVICES = ("postgres", "redis", "broker")
# One /24 per lab; the index picks it, so concurrent runs (a test beside a long
# chaos run) each get their own bridge and addresses.
NETWORK = "10.213.{index}.0"
MAX_LABS = 200
FIRST_GUEST = 10
MAX_GUESTS = 240
NOWHERE_MAC = "02:00:00:00:00:01"
IP_TIMEOUT_S = 10.0
SLOW_RATE = "64kbit"


class NetLabUnavailable(ServiceStartError):
    """This machine cannot build the lab (not root, no `ip`, no bridges)."""


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> bool:
    command = ["ip", *args]
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise ServiceStartError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.returncode == 0


def _tc(namespace: str, *args: str) -> None:
    command = ["ip", "netns", "exec", namespace, "tc", *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise ServiceStartError(f"{' '.join(command)} failed: {result.stderr.strip()}")


@dataclass
class NetLab:
    """The bridge, the services' addresses on it, and one namespace per guest."""

    index: int
    guests: dict[str, str] = field(default_factory=dict)  # process name -> namespace
    _next_guest: int = FIRST_GUEST

    @classmethod
    def create(cls) -> NetLab:
        """A lab on the first free /24; NetLabUnavailable where this cannot work."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NetLabUnavailable("network partitions need root and iproute2 (`ip`)")
        for index in range(1, MAX_LABS):
            if _ip("link", "add", f"fsbr{index}", "type", "bridge", check=False):
                lab = cls(index)
                try:
                    lab._clear_leftovers()
                    lab._address_bridge()
                except ServiceStartError:
                    lab.destroy()
                    raise
                log.info("network lab %s on %s/24", lab.bridge, lab.network)
                return lab
        raise NetLabUnavailable("cannot create a bridge (every fsbrN taken, or no permission)")

    @property
    def bridge(self) -> str:
        return f"fsbr{self.index}"

    @property
    def network(self) -> str:
        return NETWORK.format(index=self.index)

    def address(self, service: str) -> str:
        """Where `service` listens on the bridge (besides its usual 127.0.0.1)."""
        return self._host(1 + SERVICES.index(service))

    def _host(self, number: int) -> str:
        return self.network.rsplit(".", 1)[0] + f".{number}"

    def _clear_leftovers(self) -> None:
        """Namespaces and veths of a lab with this index that died without its
        cleanup (the bridge is ours now, so nobody else uses them)."""
        listed = subprocess.run(
            ["ip", "netns", "list"],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_S,
            check=False,
        )
        for line in listed.stdout.splitlines():
            name = line.split(" ", 1)[0]
            if name.startswith(f"fs{self.index}g"):
                _ip("netns", "del", name, check=False)
        links = subprocess.run(
            ["ip", "-br", "link"], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
        for line in links.stdout.splitlines():
            name = line.split(" ", 1)[0].split("@", 1)[0]
            if name.startswith(f"fs{self.index}v"):
                _ip("link", "del", name, check=False)

    def _address_bridge(self) -> None:
        for service in SERVICES:
            _ip("addr", "add", f"{self.address(service)}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def namespace_for(self, guest: str) -> str:
        """A fresh namespace for one process, joined to the bridge."""
        if self._next_guest >= FIRST_GUEST + MAX_GUESTS:
            raise ServiceStartError(f"network lab {self.bridge}: no addresses left")
        number = self._next_guest
        self._next_guest += 1
        namespace = f"fs{self.index}g{number}"
        host_end = f"fs{self.index}v{number}"
        _ip("netns", "add", namespace)
        self.guests[guest] = namespace  # from here on, destroy() removes it
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", host_end, "master", self.bridge)
        _ip("link", "set", host_end, "up")
        _ip("addr", "add", f"{self._host(number)}/24", "dev", "eth0", namespace=namespace)
        _ip("link", "set", "eth0", "up", namespace=namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        return namespace

    def exec_prefix(self, namespace: str) -> list[str]:
        """`ip netns exec` enters the namespace and execs: the pid is the process's own."""
        return ["ip", "netns", "exec", namespace]

    def cut(self, guest: str, service: str) -> None:
        """Frames from `guest` to `service` vanish from now on."""
        _ip(
            "neigh", "replace", self.address(service), "lladdr", NOWHERE_MAC,
            "dev", "eth0", "nud", "permanent", namespace=self.guests[guest],
        )  # fmt: skip

    def heal(self, guest: str, service: str) -> None:
        _ip("neigh", "del", self.address(service), "dev", "eth0", namespace=self.guests[guest])

    def slow(self, guest: str) -> None:
        """Everything `guest` sends squeezes through a thin token bucket."""
        _tc(
            self.guests[guest], "qdisc", "add", "dev", "eth0", "root",
            "tbf", "rate", SLOW_RATE, "burst", "4kb", "latency", "2s",
        )  # fmt: skip

    def unslow(self, guest: str) -> None:
        _tc(self.guests[guest], "qdisc", "del", "dev", "eth0", "root")

    def destroy(self) -> None:
        """Every namespace (their veths go with them), then the bridge."""
        for namespace in self.guests.values():
            with contextlib.suppress(ServiceStartError, subprocess.TimeoutExpired):
                _ip("netns", "del", namespace, check=False)
        self.guests.clear()
        with contextlib.suppress(ServiceStartError, subprocess.TimeoutExpired):
            _ip("link", "del", self.bridge, check=False)
