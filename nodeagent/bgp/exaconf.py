"""ExaBGP 5 text: the configuration file and the API commands the speaker sends.

Every value rendered here was validated by nodeagent.bgp.config (IP literals, integers,
community patterns), so nothing needs quoting except the MD5 password, which is passed
base64-encoded (`md5-base64 true`) so that no character of it can end up as syntax.
Prefixes are written the way ExaBGP reports them back ("192.0.2.10/32").
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Sequence

from weir.nodeagent.bgp.config import Peer, Route, SpeakerConfig

PROCESS = "weir"  # the API helper process (nodeagent/bgp/relay.py)
DEFAULT_HOLD_TIME = 180  # ExaBGP's, when the peer sets none


def attributes(route: Route, next_hop: str) -> str:
    parts = [f"next-hop {next_hop}"]
    if route.communities:
        parts.append(f"community [ {' '.join(route.communities)} ]")
    if route.large_communities:
        parts.append(f"large-community [ {' '.join(route.large_communities)} ]")
    if route.local_preference:
        parts.append(f"local-preference {route.local_preference}")
    if route.med is not None:
        parts.append(f"med {route.med}")
    if route.as_path:
        parts.append(f"as-path [ {' '.join(map(str, route.as_path))} ]")
    return " ".join(parts)


def announce(peer: str, route: Route, next_hop: str) -> str:
    return f"neighbor {peer} announce route {route.prefix} {attributes(route, next_hop)}"


def withdraw(peer: str, prefix: str) -> str:
    return f"neighbor {peer} withdraw route {prefix}"


def eor(peer: Peer) -> str:
    family = "ipv4 unicast" if peer.version == 4 else "ipv6 unicast"
    return f"neighbor {peer.address} announce eor {family}"


def _neighbor(cfg: SpeakerConfig, peer: Peer) -> list[str]:
    family = "ipv4 unicast" if peer.version == 4 else "ipv6 unicast"
    lines = [
        f"neighbor {peer.address} {{",
        f"  router-id {cfg.router_id};",
        f"  local-as {cfg.local_asn};",
        f"  peer-as {peer.asn};",
        # Keep what the API announced, so that it is sent again when the session comes back.
        "  adj-rib-out true;",
        # The speaker sends End-of-RIB itself, after the routes: see speaker.py.
        "  manual-eor true;",
    ]
    if peer.port != 179:
        lines.append(f"  connect {peer.port};")
    if peer.hold_time:
        lines.append(f"  hold-time {peer.hold_time};")
    if peer.password:
        key = base64.b64encode(peer.password.encode()).decode()
        lines += [f"  md5-password {key};", "  md5-base64 true;"]
    # Route refresh: a router may ask for our routes again (`clear bgp soft in`) without
    # keeping a copy of everything it received.
    capabilities = ["route-refresh enable;"]
    if peer.graceful_restart_time:
        capabilities.append(f"graceful-restart {peer.graceful_restart_time};")
    lines.append(f"  capability {{ {' '.join(capabilities)} }}")
    lines += [
        f"  family {{ {family}; }}",
        f"  api {{ processes [ {PROCESS} ]; neighbor-changes; fsm; send {{ parsed; update; }} }}",
        "}",
    ]
    return lines


def render(cfg: SpeakerConfig, helper: Sequence[str]) -> str:
    """The whole configuration: the API helper process, then one neighbor per peer.

    Routes are not in it: they all go through the API, with the session's local address
    as next hop, which ExaBGP only learns once it has connected (see speaker.py).
    """
    for arg in helper:
        if any(c.isspace() or c in ";{}'\"" for c in arg):
            raise ValueError(f"helper argument {arg!r} cannot be written in ExaBGP's config")
    lines = [f"process {PROCESS} {{", f"  run {' '.join(helper)};", "  encoder json;", "}", ""]
    for peer in cfg.peers:
        lines += [*_neighbor(cfg, peer), ""]
    return "\n".join(lines)


def keepalives(cfg: SpeakerConfig) -> str:
    """The keepalive file of exabgp_main.py: {peer address: [keepalive, hold time]} for the
    peers whose keepalive time is set (ExaBGP's configuration has no such setting)."""
    return json.dumps(
        {
            p.address: [p.keepalive_time, p.hold_time or DEFAULT_HOLD_TIME]
            for p in cfg.peers
            if p.keepalive_time
        },
        sort_keys=True,
    )


def normalise_prefix(prefix: str) -> str:
    """ "192.0.2.10" and "192.0.2.10/32" name the same route; ValueError when not a prefix
    (or when host bits are set: "192.0.2.10/24")."""
    return str(ipaddress.ip_network(prefix, strict=True))
