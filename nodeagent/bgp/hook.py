"""What the agent needs from BGP (BGPHook), and AgentBGP, which does it with a BGPSpeaker.

The load-balancer role calls apply() after every version and whenever the VIPs it serves
change (a service is programmed with at least one backend); the hook hands the node's BGP
settings and those VIPs, as /32 or /128 prefixes, to the speaker, which announces the ones
the controller advertises for this node. The agent reads sessions(), announced() and
draining for its NodeStatus, and calls shutdown() when it stops.

A node drained by the controller (`bgp.drain`, weirctl node drain) withdraws every route and
keeps forwarding, so the routers move its flows to the other nodes; draining() reports it
and announced() empties once the withdrawals are sent. Undrained, it announces again.

Stopping the agent (shutdown()):
- "drain" (default): withdraw every route, wait until the withdrawals are sent, keep
  forwarding for `grace_seconds` so the routers move the flows to the other nodes, then
  close the sessions. No connection breaks: the other nodes compute the same Maglev table.
- "restart": leave the routes in place at routers with graceful restart (the sessions end
  like a crash, without a NOTIFICATION): for an agent restart or upgrade, where the
  pinned data plane keeps forwarding and the next agent takes the sessions over.
"""

from __future__ import annotations

from typing import Literal, Protocol

from weir.common.pb import pb
from weir.nodeagent.bgp.speaker import BGPSpeaker

StopMode = Literal["drain", "restart"]


class BGPHook(Protocol):
    async def apply(self, bgp: pb.BGPConfig, serving_vips: frozenset[str]) -> None:
        """The node's BGP settings and the VIPs whose services are programmed now."""

    def sessions(self) -> list[pb.BGPSessionStatus]: ...

    def announced(self) -> list[str]: ...

    def errors(self) -> list[pb.ObjectError]:
        """What the node's BGP settings ask for and the speaker cannot do."""

    def settled(self) -> bool:
        """Every established session carries the routes wanted now."""

    @property
    def draining(self) -> bool: ...

    async def shutdown(self) -> None:
        """The agent is stopping (SIGTERM): drain as the hook sees fit."""


class NoBGP:
    """No speaker: nothing announced."""

    async def apply(self, bgp: pb.BGPConfig, serving_vips: frozenset[str]) -> None:
        return None

    def sessions(self) -> list[pb.BGPSessionStatus]:
        return []

    def announced(self) -> list[str]:
        return []

    def errors(self) -> list[pb.ObjectError]:
        return []

    def settled(self) -> bool:
        return True

    @property
    def draining(self) -> bool:
        return False

    async def shutdown(self) -> None:
        return None


class AgentBGP:
    def __init__(
        self, speaker: BGPSpeaker, *, on_stop: StopMode = "drain", grace_seconds: float = 10.0
    ) -> None:
        self.speaker = speaker
        self.on_stop: StopMode = on_stop
        self.grace_seconds = grace_seconds

    async def start(self) -> None:
        await self.speaker.start()

    async def apply(self, bgp: pb.BGPConfig, serving_vips: frozenset[str]) -> None:
        await self.speaker.configure(bgp)
        await self.speaker.announce(set(serving_vips))
        if bgp.drain and not self.speaker.draining:
            # No grace here: the node goes on forwarding for as long as it stays drained.
            await self.speaker.drain(0)
        elif not bgp.drain and self.speaker.draining:
            self.speaker.resume()

    def sessions(self) -> list[pb.BGPSessionStatus]:
        return self.speaker.sessions()

    def announced(self) -> list[str]:
        return self.speaker.announced()

    def errors(self) -> list[pb.ObjectError]:
        return [
            pb.ObjectError(kind=p.kind, name=p.name, message=p.message)
            for p in self.speaker.errors()
        ]

    def settled(self) -> bool:
        return self.speaker.in_sync()

    @property
    def draining(self) -> bool:
        return self.speaker.draining

    async def shutdown(self) -> None:
        if self.on_stop == "drain":
            await self.speaker.drain(self.grace_seconds)
            await self.speaker.stop(graceful=False)
        else:
            await self.speaker.stop(graceful=True)
