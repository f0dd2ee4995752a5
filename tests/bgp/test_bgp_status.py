"""Session state travels: speaker -> agent's NodeStatus -> controller -> `weirctl bgp peers`.

A real speaker peers with BIRD; its status goes to a real NodePlane server through the
agent's ControllerClient whenever it changes (the speaker's on_change), and the real
`weirctl` command reads it back. The router goes down and comes back; weirctl follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.lab.netns import Topology
from weir.nodeagent.bgp import BGPSpeaker

from tests.bgp.support import VIP, bgp_config, build, speaker_on
from tests.controller.plane_support import Plane
from tests.requirements import require, tool

pytestmark = [pytest.mark.root, pytest.mark.slow]

WEIRCTL = Path(sys.executable).parent / "weirctl"


async def weirctl_peers(target: str) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        str(WEIRCTL), "--controller", target, "bgp", "peers", "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def wait_weirctl(target: str, ok: Callable[[str, int], bool], what: str) -> None:
    """Until weirctl shows exactly one session for node lb-1, to the router, whose
    (state, routes sent) satisfy ok. Bounded; every poll runs the real command."""
    seen: object = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while True:
                nodes = await weirctl_peers(target)
                sessions = [s for n in nodes if n["node"] == "lb-1" for s in n["sessions"]]
                seen = [(s["peer"], s["state"], int(s["routes_sent"])) for s in sessions]
                if len(sessions) == 1 and seen[0][0] == "router" and ok(*seen[0][1:]):
                    return
                await asyncio.sleep(0.2)
    raise AssertionError(f"weirctl never showed {what}; last: {seen}")


async def test_weirctl_bgp_peers_follows_the_router(topo: Topology, tmp_path: Path) -> None:
    require(tool(str(WEIRCTL), package="pip install -e ."))
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    async with Plane() as plane:
        client = plane.agent("lb-1")
        started: list[BGPSpeaker] = []

        def report() -> None:  # what the agent does on the speaker's on_change
            for sp in started:
                client.report_status(
                    pb.NodeStatus(
                        bgp_sessions=sp.sessions(), announced=sp.announced(), draining=sp.draining
                    )
                )

        async with speaker_on(node, on_change=report) as speaker:
            started.append(speaker)
            await speaker.configure(bgp_config(node, hold_time_seconds=3))
            await speaker.announce({VIP})
            await wait_weirctl(plane.target, lambda st, n: (st, n) == ("established", 1), "up")

            lab.bird.kill()
            await wait_weirctl(
                plane.target, lambda st, n: st != "established" and n == 0, "the session down"
            )
            lab.bird.start()
            await wait_weirctl(
                plane.target, lambda st, n: (st, n) == ("established", 1), "the session back"
            )
            assert lab.bird.kernel_next_hops(VIP) == {node.addr()}
