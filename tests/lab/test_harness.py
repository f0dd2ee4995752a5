"""The harness (weir.lab) the lab, the tests and the benchmarks share: typed command lines the
real commands accept, everything of an agent's under the work directory, topologies composed
of simple calls, and nothing left behind, also after a failure half-way."""

from __future__ import annotations

from pathlib import Path

import pytest
from weir.controller.main import build_parser
from weir.lab.deployment import Deployment
from weir.lab.netns import Bridge, Host, NetnsError, Topology, cleanup_prefix, leftovers
from weir.lab.processes import AgentOptions, ControllerOptions
from weir.nodeagent.main import parse_args

from tests.requirements import requires, root

PREFIX = "wht"
needs_root = requires(root)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_agent_command_line_keeps_its_files_in_the_work_directory(tmp_path: Path) -> None:
    topo = Topology(PREFIX)  # nothing is created until a host, bridge or link is asked for
    ctl = Host(topo, f"{PREFIX}-ctl", {"eth0": "10.93.0.2/24"})
    weir = Deployment(
        topo, tmp_path, ctl, {"lb1": Host(topo, f"{PREFIX}-lb1")},
        controller=ControllerOptions(listen="0.0.0.0:9555"),
        agent=AgentOptions(xdp_mode="generic", drain_grace=4.0),
    )  # fmt: skip
    argv = weir.agent_options("lb1", bgp_on_stop="restart").argv()
    args = parse_args(argv[1:])  # the agent's own parser takes it
    assert args.bgp_workdir == tmp_path / "lb1-bgp"  # not /run/weir/bgp: removed with the lab
    assert args.bpffs == tmp_path / "lb1-bpf" / "weir"
    assert (args.controller, args.node, args.plaintext) == ("10.93.0.2:9555", "lb1", True)
    assert (args.xdp_mode, args.drain_grace, args.bgp_on_stop) == ("generic", 4.0, "restart")
    assert "--metrics-address" not in argv  # unset options are left to the command


def test_controller_command_line_is_what_the_controller_parses(tmp_path: Path) -> None:
    opts = ControllerOptions(
        manifests=tmp_path, maglev_seed=4242, debounce_ms=20, extra=("--history", "7")
    )
    argv = opts.argv()
    args = build_parser().parse_args(argv[1:])
    assert Path(argv[0]).name == "weir-controller"
    assert (args.source, args.manifests, args.maglev_seed) == ("file", tmp_path, 4242)
    assert (args.debounce_ms, args.history, args.plaintext) == (20.0, 7, True)
    assert flag(argv, "--log-format") == "json"


@needs_root
def test_close_after_a_failure_half_way_leaves_nothing() -> None:
    cleanup_prefix(PREFIX)
    topo = Topology(PREFIX)
    with pytest.raises(NetnsError), topo:
        lan = topo.bridge("lan")
        a = topo.host("a", forwarding=True)
        topo.link(a, lan, "10.93.0.1/24")
        work = topo.workdir()
        topo.bpffs(work / "a-bpf")
        (work / "log").touch()
        proc = a.popen(["tail", "-f", str(work / "log")])
        assert len(leftovers(PREFIX, work)) == 6  # netns, bridge, veth, dir, mount, process
        topo.link(a, Bridge(f"{PREFIX}nosuch"), "10.93.0.2/24")  # fails half-way
    assert proc.poll() is not None
    assert leftovers(PREFIX, work) == []


@needs_root
def test_a_routed_cluster_composes_from_simple_calls() -> None:
    """client -- router -- Kubernetes node k1 with a routed pod (p1) and a bridged pod (p2);
    an nftables rule on the node drops pings to p2."""
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        clients, nodes = topo.bridge("cli"), topo.bridge("nodes")
        router = topo.host("router", forwarding=True)
        topo.link(router, clients, "10.93.1.1/24", iface="eth0")
        topo.link(router, nodes, "10.93.2.1/24", iface="eth1")
        client = topo.host("client")
        topo.link(client, clients, "10.93.1.2/24")
        client.route("default", "10.93.1.1")
        k1 = topo.host("k1", forwarding=True)
        topo.link(k1, nodes, "10.93.2.11/24")
        k1.route("default", "10.93.2.1")
        router.route("10.93.64.0/23", "10.93.2.11")  # k1's pod CIDR

        p1 = topo.host("k1-p1")
        topo.wire(k1, p1, "10.93.64.1/30", "10.93.64.2/30", a_iface="p1", b_iface="eth0")
        p1.route("default", "10.93.64.1")
        pods = topo.bridge("pods", host=k1)
        k1.add_address("10.93.65.1/24", pods.name)
        p2 = topo.host("k1-p2")
        topo.link(p2, pods, "10.93.65.2/24")
        p2.route("default", "10.93.65.1")

        for pod in (p1, p2):
            client.run(["ping", "-c1", "-W2", pod.addr()])
        k1.nft(f"""
            table inet pods {{
                chain forward {{
                    type filter hook forward priority 0;
                    ip daddr {p2.addr()} icmp type echo-request drop
                }}
            }}
        """)
        client.run(["ping", "-c1", "-W2", p1.addr()])
        assert "100% packet loss" in client.run(["ping", "-c1", "-W1", p2.addr()], check=False)
    assert leftovers(PREFIX) == []
