"""The node's BGP settings, validated: pb.BGPConfig in, typed and safe-to-render values out.

The controller validates peers and advertisements before they reach a node; the speaker
checks again because whatever it renders goes into ExaBGP's configuration and API. A bad
peer or advertisement is skipped with a clear error instead of breaking the whole speaker.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from weir.common.pb import pb

MAX_ASN = 2**32 - 1
MAX_GR_TIME = 4095  # the graceful restart capability carries the time in 12 bits
DEFAULT_GR_TIME = 120
MAX_MD5_KEY = 80  # TCP_MD5SIG_MAXKEYLEN
WELL_KNOWN_COMMUNITIES = frozenset({"no-export", "no-advertise", "no-export-subconfed", "nopeer"})
_STANDARD = re.compile(r"^(\d{1,5}):(\d{1,5})$")
_LARGE = re.compile(r"^(\d{1,10}):(\d{1,10}):(\d{1,10})$")


@dataclass(frozen=True)
class Peer:
    name: str
    address: str  # normalised IP literal
    asn: int
    port: int  # 179 unless set
    # seconds; 0 = ExaBGP's default (180). ExaBGP sends keepalives every hold time / 3 and
    # has no setting of its own for them, so the peer's keepalive time is not used.
    hold_time: int
    password: str  # TCP MD5 key, "" = none
    graceful_restart_time: int  # seconds; 0 = graceful restart off

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True)
class Route:
    """One prefix as announced to one peer, with its path attributes."""

    prefix: str
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_preference: int = 0  # 0 = unset


@dataclass(frozen=True)
class Advertisement:
    route: Route
    peers: frozenset[str]  # peer names; empty = every peer of the node

    def applies_to(self, peer: Peer) -> bool:
        family = ipaddress.ip_network(self.route.prefix).version
        return family == peer.version and (not self.peers or peer.name in self.peers)


@dataclass(frozen=True)
class SpeakerConfig:
    local_asn: int = 0
    router_id: str = ""
    peers: tuple[Peer, ...] = ()
    # By prefix: the controller may split one prefix into several advertisements, one
    # per group of peers sharing the same attributes.
    advertisements: dict[str, tuple[Advertisement, ...]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.local_asn != 0 and bool(self.peers)

    def session_settings(self) -> tuple[object, ...]:
        """What ExaBGP's configuration depends on, apart from routes."""
        return (self.local_asn, self.router_id, self.peers)

    def routes_for(self, prefixes: set[str]) -> dict[str, dict[str, Route]]:
        """Per peer address, the routes to announce: each prefix that has an advertisement
        for that peer (the first one). A prefix the controller did not advertise is never
        announced."""
        plan: dict[str, dict[str, Route]] = {}
        for peer in self.peers:
            routes = plan[peer.address] = {}
            for p in sorted(prefixes):
                adv = next((a for a in self.advertisements.get(p, ()) if a.applies_to(peer)), None)
                if adv is not None:
                    routes[p] = adv.route
        return plan


def _is_ipv4(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 4
    except ValueError:
        return False


def _check_asn(value: int, what: str) -> None:
    if not 1 <= value <= MAX_ASN:
        raise ValueError(f"{what} {value} is out of range 1..{MAX_ASN}")


def _peer(p: pb.BGPPeer) -> Peer:
    try:
        address = ipaddress.ip_address(p.address)
    except ValueError:
        raise ValueError(f"address {p.address!r} is not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"address {p.address} cannot be a BGP peer")
    _check_asn(p.asn, "peer ASN")
    if p.port > 65535:
        raise ValueError(f"port {p.port} is out of range")
    if p.hold_time_seconds and not 3 <= p.hold_time_seconds <= 65535:
        raise ValueError(f"hold time {p.hold_time_seconds}s must be 3..65535 (or unset)")
    if len(p.password.encode()) > MAX_MD5_KEY:
        raise ValueError(f"password is longer than {MAX_MD5_KEY} bytes")
    if p.graceful_restart_time_seconds > MAX_GR_TIME:
        raise ValueError(f"graceful restart time must be at most {MAX_GR_TIME}s")
    gr_time = (p.graceful_restart_time_seconds or DEFAULT_GR_TIME) if p.graceful_restart else 0
    return Peer(
        name=p.name,
        address=str(address),
        asn=p.asn,
        port=p.port or 179,
        hold_time=p.hold_time_seconds,
        password=p.password,
        graceful_restart_time=gr_time,
    )


def _community(value: str) -> tuple[str, bool]:
    """(normalised community, is_large); ValueError when malformed."""
    if value in WELL_KNOWN_COMMUNITIES:
        return value, False
    if m := _STANDARD.match(value):
        if all(int(x) <= 0xFFFF for x in m.groups()):
            return value, False
    elif (m := _LARGE.match(value)) and all(int(x) <= MAX_ASN for x in m.groups()):
        return value, True
    raise ValueError(f"community {value!r} is neither A:B (16-bit), A:B:C (32-bit) nor well-known")


def _advertisement(a: pb.Advertisement) -> Advertisement:
    try:
        net = ipaddress.ip_network(a.prefix)
    except ValueError:
        raise ValueError(f"prefix {a.prefix!r} is not a network") from None
    standard: list[str] = []
    large: list[str] = []
    for c in a.communities:
        value, is_large = _community(c)
        (large if is_large else standard).append(value)
    route = Route(str(net), tuple(standard), tuple(large), a.local_preference)
    return Advertisement(route, frozenset(a.peers))


def parse(cfg: pb.BGPConfig, default_router_id: str = "") -> tuple[SpeakerConfig, list[str]]:
    """Validate a node's BGP settings. Returns the usable part and one message per problem.

    BGP is off (an empty config) when local_asn is 0, or when the local ASN or the router
    id is unusable: nothing can be announced without them.
    """
    errors: list[str] = []
    if cfg.local_asn == 0:
        return SpeakerConfig(), errors
    router_id = cfg.router_id or default_router_id
    try:
        _check_asn(cfg.local_asn, "local ASN")
    except ValueError as exc:
        return SpeakerConfig(), [f"{exc}: BGP off"]
    if not _is_ipv4(router_id):
        return SpeakerConfig(), [f"router id {router_id!r} is not an IPv4 address: BGP off"]

    peers: dict[str, Peer] = {}
    for p in sorted(cfg.peers, key=lambda p: p.name):
        try:
            peer = _peer(p)
        except ValueError as exc:
            errors.append(f"BGPPeer {p.name}: {exc}; skipped")
            continue
        if peer.address in peers:
            errors.append(
                f"BGPPeer {p.name}: address {peer.address} is already used by "
                f"{peers[peer.address].name}; skipped"
            )
            continue
        peers[peer.address] = peer

    advertisements: dict[str, tuple[Advertisement, ...]] = {}
    for a in cfg.advertisements:
        try:
            adv = _advertisement(a)
        except ValueError as exc:
            errors.append(f"advertisement {a.prefix}: {exc}; not announced")
            continue
        advertisements[adv.route.prefix] = (*advertisements.get(adv.route.prefix, ()), adv)
    return SpeakerConfig(cfg.local_asn, router_id, tuple(peers.values()), advertisements), errors
