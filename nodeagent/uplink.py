"""The uplink as the kernel sees it, over netlink: its MTU, MAC and addresses, and the next
hop toward a destination (a route lookup).

Both roles read the MTU (the encapsulation must fit it) and check that this node's address
is on the uplink; the load-balancer role sends encapsulated packets to the next hop toward
each backend's node: the gateway of the route to it, or the node itself when it is on-link.

Netlink through pyroute2's AsyncIPRoute (the sync IPRoute cannot run inside an event loop);
calls are serialised on one socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

RTN_LOCAL = 2  # a route to one of this host's own addresses


class UplinkError(RuntimeError):
    """The uplink itself is unusable (missing interface, no address)."""


@dataclass(frozen=True)
class UplinkInfo:
    name: str
    index: int
    mtu: int
    mac: bytes
    addresses: tuple[Interface, ...]  # with their prefix lengths

    def owns(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(a.ip == ip for a in self.addresses)

    def check_own(self, address: str, why: str) -> None:
        """Raise UplinkError unless this node's address (from its view) is the uplink's."""
        if not self.owns(address):
            have = ", ".join(str(a) for a in self.addresses) or "none"
            raise UplinkError(
                f"this node's address {address or '(none in its view)'} is not on "
                f"{self.name} ({have}): {why}"
            )


@dataclass(frozen=True)
class Hop:
    """Where packets to a destination go on the uplink."""

    address: str  # the on-link neighbour: the route's gateway, or the destination itself
    local: bool = False  # the destination is this host: its packets go up its own stack


@dataclass(frozen=True)
class Routes:
    hops: dict[str, Hop] = field(default_factory=dict)  # destination -> next hop
    errors: dict[str, str] = field(default_factory=dict)  # destination -> why none, for a user


async def link_index(ipr: AsyncIPRoute, name: str) -> int:
    found = await ipr.link_lookup(ifname=name)
    if not found:
        raise UplinkError(f"interface {name} not found")
    return found[0]


async def link_addresses(ipr: AsyncIPRoute, index: int) -> list[Interface]:
    out = []
    async for msg in await ipr.get_addr(index=index):
        addr = msg.get("IFA_ADDRESS")
        if addr:
            out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
    return out


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class NetlinkSession:
    """A netlink socket for one interface, open inside `async with`; _lock serializes the
    requests that must not interleave."""

    def __init__(self, interface: str, *, netns: str | None = None) -> None:
        self.interface = interface
        self.netns = netns  # for tests and tools; the agent runs in its node's netns
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        self._ipr = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _socket(self) -> AsyncIPRoute:
        assert self._ipr is not None, f"use {type(self).__name__} as an async context manager"
        return self._ipr


class Uplink(NetlinkSession):
    """One interface. Use as `async with Uplink("eth0") as uplink`."""

    async def info(self) -> UplinkInfo:
        """Raises UplinkError when the interface is missing."""
        async with self._lock:
            ipr = self._socket()
            index = await link_index(ipr, self.interface)
            async for link in await ipr.get_links(index):
                return UplinkInfo(
                    name=self.interface,
                    index=index,
                    mtu=link.get("IFLA_MTU"),
                    mac=mac_bytes(link.get("IFLA_ADDRESS") or "00:00:00:00:00:00"),
                    addresses=tuple(await link_addresses(ipr, index)),
                )
        raise UplinkError(f"interface {self.interface} vanished")

    async def next_hops(self, destinations: Iterable[str]) -> Routes:
        """The next hop toward each destination, as the routing table has it now. A
        destination routed through another interface (or not at all) is an error: the
        data plane sends only by the uplink."""
        out = Routes()
        async with self._lock:
            ipr = self._socket()
            index = await link_index(ipr, self.interface)
            for dst in sorted(set(destinations)):
                try:
                    (route,) = await ipr.route("get", dst=dst)
                except NetlinkError as exc:
                    out.errors[dst] = f"no route to {dst}: {exc.args[-1]}"
                    continue
                except ValueError as exc:
                    out.errors[dst] = f"{dst} is not an address: {exc}"
                    continue
                if route["type"] == RTN_LOCAL:
                    out.hops[dst] = Hop(dst, local=True)
                elif route.get("RTA_OIF") != index:
                    via = await _link_name(ipr, route.get("RTA_OIF"))
                    out.errors[dst] = (
                        f"{dst} is routed through {via}, not {self.interface}: "
                        "encapsulated packets leave by the uplink"
                    )
                else:
                    out.hops[dst] = Hop(route.get("RTA_GATEWAY") or dst)
        return out


async def _link_name(ipr: AsyncIPRoute, index: int | None) -> str:
    try:
        async for link in await ipr.get_links(index):
            return str(link.get("IFLA_IFNAME"))
    except (NetlinkError, TypeError):
        pass
    return f"interface index {index}"
