"""The agent's BGP speaker: announces the node's VIPs through a supervised ExaBGP 5.

    speaker = BGPSpeaker(default_router_id=node_ip, on_change=send_status)
    await speaker.start()
    await speaker.configure(snapshot.bgp)       # peers may change at runtime
    await speaker.announce({"192.0.2.10/32"})   # the full set to announce now
    speaker.sessions()                          # -> list[pb.BGPSessionStatus]
    await speaker.drain(grace_seconds=10)       # SIGTERM: withdraw, let flows move
    await speaker.stop(graceful=False)          # graceful=True: routers keep routes (GR)

See nodeagent/bgp/speaker.py for the semantics, and nodeagent/bgp/hook.py for AgentBGP,
the agent's BGP hook on top of it.
"""

from weir.nodeagent.bgp.hook import AgentBGP, BGPHook, NoBGP
from weir.nodeagent.bgp.process import ExaBGPError, ExaBGPOptions
from weir.nodeagent.bgp.speaker import BGPSpeaker

__all__ = ["AgentBGP", "BGPHook", "BGPSpeaker", "ExaBGPError", "ExaBGPOptions", "NoBGP"]
