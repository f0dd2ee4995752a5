"""Shared by the BGP tests: a router (BIRD) and LB nodes on one bridge, speakers on them."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from weir.common.pb import pb
from weir.lab.bird import Bird, BirdBFD, BirdPeer
from weir.lab.netns import Host, Topology
from weir.nodeagent.bgp import BGPSpeaker, ExaBGPOptions

ROUTER = "10.98.0.1"
ROUTER_ASN = 65000
NODE_ASN = 65001
VIP = "192.0.2.10/32"
VIP2 = "192.0.2.11/32"


@dataclass
class Lab:
    router: Host
    nodes: list[Host]
    bird: Bird


def build(
    topo: Topology, tmp: Path, n: int, *, bird_bfd: BirdBFD | None = None, **peer_opts: object
) -> Lab:
    """A router and n nodes (10.98.0.11 and up); bird_bfd: BIRD runs `protocol bfd` with
    these timers (peer option bfd=True: the BGP sessions follow it)."""
    lan = topo.bridge("lan")
    router = topo.host("r", forwarding=True)
    topo.link(router, lan, f"{ROUTER}/24")
    nodes = []
    for i in range(n):
        node = topo.host(f"n{i + 1}")
        topo.link(node, lan, f"10.98.0.{11 + i}/24")
        nodes.append(node)
    peers = [BirdPeer(f"n{i + 1}", h.addr(), NODE_ASN, **peer_opts) for i, h in enumerate(nodes)]
    bird = Bird(router, tmp / "bird", ROUTER, ROUTER_ASN, peers, bfd=bird_bfd)
    bird.start()
    return Lab(router, nodes, bird)


def bgp_config(
    node: Host,
    prefixes: tuple[str, ...] = (VIP,),
    *,
    peers: tuple[pb.BGPPeer, ...] | None = None,
    **peer_opts: object,
) -> pb.BGPConfig:
    if peers is None:
        peers = (pb.BGPPeer(name="router", address=ROUTER, asn=ROUTER_ASN, **peer_opts),)
    return pb.BGPConfig(
        local_asn=NODE_ASN,
        router_id=node.addr(),
        peers=peers,
        advertisements=[pb.Advertisement(prefix=p) for p in prefixes],
    )


@contextlib.asynccontextmanager
async def speaker_on(
    node: Host, on_change: Callable[[], None] | None = None
) -> AsyncIterator[BGPSpeaker]:
    """A speaker whose ExaBGP runs in node's namespace; stopped (cleanly) at exit."""
    opts = ExaBGPOptions(prefix=("ip", "netns", "exec", node.name), log_level="INFO")
    # The default work directory (a private one under /tmp), not pytest's tmp_path: that
    # is inside a 0700 directory that ExaBGP's unprivileged user could not get through.
    speaker = BGPSpeaker(options=opts, on_change=on_change)
    await speaker.start()
    try:
        yield speaker
    finally:
        await speaker.stop(graceful=False)


def hard_failure(node: Host, speaker: BGPSpeaker) -> None:
    """The node dies under the speaker: cable pulled, then its ExaBGP and BFD daemon
    killed, so nothing more leaves it (the speaker starts them again, as a rebooted node
    would)."""
    node.run(["ip", "link", "set", "eth0", "down"])
    for proc in (speaker._proc, speaker._bfd._proc):
        if proc is not None and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


def session(speaker: BGPSpeaker, peer: str = "router") -> pb.BGPSessionStatus | None:
    return next((s for s in speaker.sessions() if s.peer == peer), None)


def established(speaker: BGPSpeaker, peer: str = "router") -> bool:
    s = session(speaker, peer)
    return s is not None and s.state == "established"
