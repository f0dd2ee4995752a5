"""The node's BGP settings, validated: pb.BGPConfig in, typed and safe-to-render values out.

The controller validates peers and advertisements before they reach a node; the speaker
checks again because whatever it renders goes into ExaBGP's configuration and API. A bad
peer or advertisement is skipped with a clear error instead of breaking the whole speaker.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from weir.common import communities
from weir.common.pb import pb
from weir.nodeagent.bfd import Settings

MAX_ASN = 2**32 - 1
MAX_GR_TIME = 4095  # the graceful restart capability carries the time in 12 bits
DEFAULT_GR_TIME = 120
MAX_MD5_KEY = 80  # TCP_MD5SIG_MAXKEYLEN
BFD_INTERVALS_MS = range(10, 60001)
BFD_MULTIPLIERS = range(2, 256)
MAX_PREPEND = 10


@dataclass(frozen=True)
class Problem:
    """Something the node's BGP settings ask for that the agent cannot do, against the
    object it came from (reported in NodeStatus.bgp_errors)."""

    kind: str  # BGPPeer, BGPAdvertisement, Node
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.message}"


@dataclass(frozen=True)
class PeerBFD:
    settings: Settings
    required: bool  # announce nothing to the peer unless its BFD session is up


@dataclass(frozen=True)
class Peer:
    name: str
    address: str  # normalised IP literal
    asn: int
    port: int  # 179 unless set
    hold_time: int  # seconds; 0 = ExaBGP's default (180)
    password: str  # TCP MD5 key, "" = none
    graceful_restart_time: int  # seconds; 0 = graceful restart off
    keepalive_time: int = 0  # seconds; 0 = a third of the negotiated hold time
    bfd: PeerBFD | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def session(self) -> Peer:
        """What ExaBGP's session depends on (BFD runs beside it: changing it keeps the
        session up)."""
        return replace(self, bfd=None)


@dataclass(frozen=True)
class Route:
    """One prefix as announced to one peer, with its path attributes."""

    prefix: str
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_preference: int = 0  # 0 = unset
    med: int | None = None
    # The whole AS path to send to an eBGP peer, our ASN included, when it is prepended
    # (ExaBGP sends a given path as it is); () = the usual one. Never sent to iBGP peers.
    as_path: tuple[int, ...] = ()


@dataclass(frozen=True)
class Advertisement:
    route: Route
    peers: frozenset[str]  # peer names; empty = every peer of the node
    sources: tuple[str, ...] = ()  # the BGPAdvertisements behind it

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
        return (self.local_asn, self.router_id, tuple(p.session() for p in self.peers))

    def advertisement(self, peer: Peer, prefix: str) -> Advertisement | None:
        """The advertisement that announces prefix to peer (the first that applies)."""
        return next((a for a in self.advertisements.get(prefix, ()) if a.applies_to(peer)), None)

    def routes_for(self, prefixes: set[str]) -> dict[str, dict[str, Route]]:
        """Per peer address, the routes to announce: each prefix that has an advertisement
        for that peer (the first one). A prefix the controller did not advertise is never
        announced."""
        plan: dict[str, dict[str, Route]] = {}
        for peer in self.peers:
            routes = plan[peer.address] = {}
            for p in sorted(prefixes):
                adv = self.advertisement(peer, p)
                if adv is None:
                    continue
                ibgp = peer.asn == self.local_asn
                routes[p] = replace(adv.route, as_path=()) if ibgp else adv.route
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
    keepalive = p.keepalive_time_seconds
    if keepalive and p.hold_time_seconds and keepalive > p.hold_time_seconds:
        raise ValueError(f"keepalive time {keepalive}s is above the hold time")
    gr_time = (p.graceful_restart_time_seconds or DEFAULT_GR_TIME) if p.graceful_restart else 0
    return Peer(
        name=p.name,
        address=str(address),
        asn=p.asn,
        port=p.port or 179,
        hold_time=p.hold_time_seconds,
        password=p.password,
        graceful_restart_time=gr_time,
        keepalive_time=keepalive,
        bfd=_bfd(p.bfd) if p.HasField("bfd") else None,
    )


def _bfd(b: pb.BFD) -> PeerBFD:
    for what, ms in (("transmit", b.min_transmit_ms), ("receive", b.min_receive_ms)):
        if ms not in BFD_INTERVALS_MS:
            raise ValueError(f"BFD {what} interval {ms} ms is out of range 10..60000")
    if b.detect_multiplier not in BFD_MULTIPLIERS:
        raise ValueError(f"BFD detect multiplier {b.detect_multiplier} is out of range 2..255")
    settings = Settings(b.min_transmit_ms * 1000, b.min_receive_ms * 1000, b.detect_multiplier)
    return PeerBFD(settings, b.required)


def _advertisement(a: pb.Advertisement, local_asn: int) -> Advertisement:
    try:
        net = ipaddress.ip_network(a.prefix)
    except ValueError:
        raise ValueError(f"prefix {a.prefix!r} is not a network") from None
    if a.as_path_prepend > MAX_PREPEND:
        raise ValueError(f"AS-path prepend {a.as_path_prepend} is above {MAX_PREPEND}")
    parsed = sorted({communities.parse(c) for c in a.communities})
    route = Route(
        str(net),
        tuple(c.value for c in parsed if not c.large),
        tuple(c.value for c in parsed if c.large),
        a.local_preference,
        a.med if a.HasField("med") else None,
        (local_asn,) * (a.as_path_prepend + 1) if a.as_path_prepend else (),
    )
    return Advertisement(route, frozenset(a.peers), tuple(a.sources))


def parse(cfg: pb.BGPConfig, default_router_id: str = "") -> tuple[SpeakerConfig, list[Problem]]:
    """Validate a node's BGP settings. Returns the usable part and one message per problem.

    BGP is off (an empty config) when local_asn is 0, or when the local ASN or the router
    id is unusable: nothing can be announced without them.
    """
    errors: list[Problem] = []
    if cfg.local_asn == 0:
        return SpeakerConfig(), errors
    router_id = cfg.router_id or default_router_id
    try:
        _check_asn(cfg.local_asn, "local ASN")
    except ValueError as exc:
        return SpeakerConfig(), [Problem("Node", "", f"{exc}: BGP off")]
    if not _is_ipv4(router_id):
        message = f"router id {router_id!r} is not an IPv4 address: BGP off"
        return SpeakerConfig(), [Problem("Node", "", message)]

    peers: dict[str, Peer] = {}
    for p in sorted(cfg.peers, key=lambda p: p.name):
        try:
            peer = _peer(p)
        except ValueError as exc:
            errors.append(Problem("BGPPeer", p.name, f"{exc}; skipped"))
            continue
        if peer.address in peers:
            message = f"address {peer.address} is already used by {peers[peer.address].name}"
            errors.append(Problem("BGPPeer", p.name, f"{message}; skipped"))
            continue
        peers[peer.address] = peer

    advertisements: dict[str, tuple[Advertisement, ...]] = {}
    for a in cfg.advertisements:
        try:
            adv = _advertisement(a, cfg.local_asn)
        except ValueError as exc:
            message = f"advertisement {a.prefix}: {exc}; not announced"
            errors += [Problem("BGPAdvertisement", n, message) for n in a.sources or ("",)]
            continue
        advertisements[adv.route.prefix] = (*advertisements.get(adv.route.prefix, ()), adv)
    return SpeakerConfig(cfg.local_asn, router_id, tuple(peers.values()), advertisements), errors
