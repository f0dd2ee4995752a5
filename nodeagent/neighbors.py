"""MAC addresses on the uplink, from the kernel's neighbour table.

DSR in L2 mode rewrites the destination MAC to the backend's, so every such backend must be
on the uplink's segment and its MAC known before its service is programmed; an encapsulated
packet goes to the MAC of the next hop toward the backend's node (nodeagent.uplink finds
that hop). For each address the resolver:
- checks that it is inside one of the uplink's connected subnets (a routed backend cannot
  be reached by an L2 rewrite: clear error instead), unless the caller knows it is on-link
  (a next hop from the routing table);
- reads the neighbour table (one dump for all addresses);
- for addresses with no usable entry, asks the kernel to resolve them with an RTM_NEWNEIGH
  carrying NTF_USE (the kernel sends the ARP/ND solicitation itself, nothing else is sent
  to the backend), then re-reads the table until every one is resolved or failed, bounded
  by `timeout`.

XDP-forwarded traffic never confirms a neighbour entry, so the kernel lets it go stale and
never notices a backend whose MAC changed (a pod recreated with the same IP). The agent calls
`resolve(..., reprobe=True)` periodically: it also kicks the kernel to re-verify entries that
are not REACHABLE, and a changed MAC shows up in a later call.

Addresses that cannot be resolved are reported with a reason in Resolution.errors; what to do
with them is the caller's choice (see nodeagent/backend_macs.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_USE,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_NOARP,
    NUD_NONE,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
)
from weir.common.logs import get_logger
from weir.nodeagent.uplink import NetlinkSession, link_addresses, link_index, mac_bytes

log = get_logger(__name__)

# States whose link-layer address is the best the kernel knows. STALE/DELAY/PROBE entries are
# what the kernel itself would transmit to while it re-verifies them.
USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT
# States in which the kernel is still waiting for an answer.
PENDING = NUD_INCOMPLETE | NUD_NONE


@dataclass(frozen=True)
class Resolution:
    macs: dict[str, bytes] = field(default_factory=dict)  # address -> 6-byte MAC
    errors: dict[str, str] = field(default_factory=dict)  # address -> reason, for a user
    # Addresses outside the uplink's subnets (also in errors): no MAC can ever be right.
    offlink: frozenset[str] = frozenset()


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class NeighborResolver(NetlinkSession):
    """Resolves MACs on one interface. Use as `async with NeighborResolver(...)`.
    Calls are serialised: one netlink socket, one request at a time."""

    def __init__(
        self,
        interface: str,
        *,
        timeout: float = 1.0,
        interval: float = 0.01,
        netns: str | None = None,
    ) -> None:
        super().__init__(interface, netns=netns)
        self.timeout = timeout
        self.interval = interval

    async def resolve(
        self, addresses: Iterable[str], *, reprobe: bool = False, onlink: Iterable[str] = ()
    ) -> Resolution:
        """MACs for addresses (deduplicated). Waits at most `timeout` for missing ones.
        `onlink`: addresses known to be neighbours on the uplink (next hops the routing
        table names), resolved without the subnet check."""
        known = set(onlink)
        wanted = sorted(set(addresses) | known)
        if not wanted:
            return Resolution()
        async with self._lock:
            return await self._resolve(wanted, reprobe, known)

    async def _resolve(self, wanted: list[str], reprobe: bool, known: set[str]) -> Resolution:
        ipr = self._ipr
        assert ipr is not None, "use NeighborResolver as an async context manager"
        ifindex = await link_index(ipr, self.interface)
        subnets = [a.network for a in await link_addresses(ipr, ifindex)]
        errors: dict[str, str] = {}
        onlink: list[str] = []
        for addr in wanted:
            ip = ipaddress.ip_address(addr)
            same_family = [n for n in subnets if n.version == ip.version]
            if addr in known or any(ip in net for net in same_family):
                onlink.append(addr)
            else:
                nets = ", ".join(str(n) for n in same_family) or "none"
                errors[addr] = (
                    f"backend {addr} is not in a subnet of {self.interface} ({nets}): "
                    "L2 DSR needs backends on the uplink's segment"
                )
        table = await self._dump(ifindex)
        macs: dict[str, bytes] = {}
        missing: list[str] = []
        for addr in onlink:
            state, mac = table.get(addr, (NUD_NONE, None))
            if mac is not None and state & USABLE:
                macs[addr] = mac
                if reprobe and not state & (NUD_REACHABLE | NUD_PERMANENT):
                    await self._kick(ifindex, addr)
            else:
                missing.append(addr)
        for addr in missing:
            await self._kick(ifindex, addr)
        deadline = time.monotonic() + self.timeout
        while missing:
            await asyncio.sleep(self.interval)
            table = await self._dump(ifindex)
            still: list[str] = []
            for addr in missing:
                state, mac = table.get(addr, (NUD_NONE, None))
                if mac is not None and state & USABLE:
                    macs[addr] = mac
                elif state & PENDING and time.monotonic() < deadline:
                    still.append(addr)
                else:
                    errors[addr] = (
                        f"no ARP/ND answer from {addr} on {self.interface} "
                        f"within {self.timeout:g}s (neighbour state {_state_name(state)})"
                    )
            missing = still
        if errors:
            log.info("neighbours unresolved", interface=self.interface, count=len(errors))
        return Resolution(macs, errors, frozenset(wanted) - frozenset(onlink))

    async def _dump(self, ifindex: int) -> dict[str, tuple[int, bytes | None]]:
        assert self._ipr is not None
        table: dict[str, tuple[int, bytes | None]] = {}
        async for msg in await self._ipr.neigh("dump", ifindex=ifindex):
            dst = msg.get("NDA_DST")
            lladdr = msg.get("NDA_LLADDR")
            if dst:
                table[dst] = (msg["state"], mac_bytes(lladdr) if lladdr else None)
        return table

    async def _kick(self, ifindex: int, addr: str) -> None:
        """Ask the kernel to (re)resolve addr: it creates the entry if needed and solicits."""
        assert self._ipr is not None
        try:
            await self._ipr.neigh(
                "replace",
                dst=addr,
                ifindex=ifindex,
                family=_family(addr),
                flags=NTF_USE,
                state=NUD_NONE,
            )
        except NetlinkError as e:
            log.warning("neighbour probe failed", address=addr, error=str(e))


def _state_name(state: int) -> str:
    names = {
        NUD_INCOMPLETE: "incomplete",
        NUD_REACHABLE: "reachable",
        NUD_STALE: "stale",
        NUD_DELAY: "delay",
        NUD_PROBE: "probe",
        NUD_FAILED: "failed",
        NUD_NOARP: "noarp",
        NUD_PERMANENT: "permanent",
    }
    return names.get(state, "none" if state == NUD_NONE else hex(state))
