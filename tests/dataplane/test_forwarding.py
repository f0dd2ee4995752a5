"""Real TCP through the XDP data plane with Direct Server Return, in namespaces.

client --- bridge --- lb (XDP on eth0)
                 \\--- be1, be2 (VIP on lo, arp_ignore/arp_announce)

The client routes the VIP via the lb node; XDP rewrites the MACs and transmits the
frames back out towards the backend Maglev picked; the backend answers the client
directly from the VIP. The client binds its source ports, so the backend that answers
each connection can be predicted from the table and checked.
"""

from __future__ import annotations

import contextlib
import json
import select
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest
from weir.lab.netns import Host, Topology, cleanup_prefix
from weir.lab.roles import attach_xdp_pass, dsr_backend, finish_checksums
from weir.nodeagent.dataplane import BackendTarget, Dataplane, DataplaneConfig, Frontend
from weir.nodeagent.dataplane.inspection import pass_counts, stats
from weir.nodeagent.maglev import backend_id, build_table

from .support import Flow, bpffs_mount, in_netns, mac, predicted_backend

PREFIX = "wdpf"
VIP = "10.98.100.1"
PORT = 8080
SEED = 4242

SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT))
    s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(sys.argv[1].encode())
        c.close()
    """
).replace("PORT", str(PORT))

CLIENT = textwrap.dedent(
    """
    import json, socket, sys
    out = {}
    for port in range(int(sys.argv[2]), int(sys.argv[3])):
        s = socket.socket()
        s.settimeout(2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((sys.argv[1], port))
        try:
            s.connect((sys.argv[4], int(sys.argv[5])))
            out[port] = s.recv(64).decode()
        except OSError as exc:
            out[port] = "error: " + str(exc)
        finally:
            s.close()
    print(json.dumps(out))
    """
)


SYNS = textwrap.dedent(
    """
    import socket, sys
    for _ in range(int(sys.argv[3])):  # one SYN each, sent by connect(); no retransmission
        s = socket.socket()          # follows: the socket closes at once
        s.setblocking(False)
        s.connect_ex((sys.argv[1], int(sys.argv[2])))
        s.close()
    """
)
GONE_MAC = "02:00:00:00:de:ad"  # a node no longer on the LAN: the bridge floods its frames


def rx_packets(host: Host) -> int:
    return int(host.run(["cat", "/sys/class/net/eth0/statistics/rx_packets"]))


def start_server(host: Host, name: str) -> None:
    proc = host.popen([sys.executable, "-c", SERVER, name], stdout=-1, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    assert ready and proc.stdout.readline().strip() == "ready", f"{name} did not start"


@dataclass
class Lab:
    client: Host
    lb: Host
    backends: list[Host]
    targets: list[BackendTarget]
    table: np.ndarray
    dp: Dataplane

    def connect(self, source: str, first: int, last: int) -> dict[str, str]:
        """Connections from source ports first..last-1: {port: name of the answering backend}."""
        args = [sys.executable, "-c", CLIENT, source, str(first), str(last), VIP, str(PORT)]
        out = json.loads(self.client.run(args, timeout=120))
        errors = {p: r for p, r in out.items() if r.startswith("error")}
        assert not errors, errors
        return out


@contextlib.contextmanager
def dsr_lab(mode: str, frontend: Frontend) -> Iterator[Lab]:
    """The topology above, with `frontend` programmed on the lb over be1 and be2."""
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo, bpffs_mount() as bpffs:
        lan = topo.bridge("lan")
        client, lb = topo.host("client"), topo.host("lb")
        backends = [topo.host("be1"), topo.host("be2")]
        topo.link(client, lan, "10.98.0.2/24")
        lb_port = topo.link(lb, lan, "10.98.0.3/24")
        if mode == "native":
            attach_xdp_pass([lb_port])
            finish_checksums(client)
        for i, be in enumerate(backends):
            topo.link(be, lan, f"10.98.0.{11 + i}/24")
            dsr_backend(be, [VIP])
            start_server(be, be.name)
        client.run(["ip", "route", "add", f"{VIP}/32", "via", "10.98.0.3"])

        targets = [BackendTarget(be.addr(), PORT, mac(be.mac("eth0"))) for be in backends]
        table = build_table([backend_id(t.address, PORT, "TCP") for t in targets], 251, seed=SEED)
        with in_netns(lb.name):
            dp = Dataplane.open(DataplaneConfig(interface="eth0", bpffs=bpffs, xdp_mode=mode))
        try:
            assert dp.xdp_mode == mode
            dp.set_seed(SEED)
            dp.apply_service(frontend, targets, table)
            yield Lab(client, lb, backends, targets, table, dp)
        finally:
            with in_netns(lb.name):
                dp.close(detach=True)


FRONTEND = Frontend(f"{VIP}:{PORT}/TCP", VIP, PORT, 6)


@pytest.mark.parametrize("mode", ["generic", "native"])
def test_tcp_reaches_the_maglev_backend_and_replies_bypass_the_lb(
    privileged: None, mode: str
) -> None:
    with dsr_lab(mode, FRONTEND) as lab:
        client, lb, backends, dp = lab.client, lab.lb, lab.backends, lab.dp
        first, last = 20000, 20040
        rx_before = rx_packets(lb)
        out = lab.connect("10.98.0.2", first, last)
        for port, name in out.items():
            flow = Flow("10.98.0.2", VIP, int(port), PORT)
            assert name == backends[predicted_backend(flow, SEED, lab.table)].name
        assert {name for name in out.values()} == {be.name for be in backends}
        # The replies went straight to the client: the lb received the client's
        # packets (all forwarded by XDP) and little else (ARP, IPv6 chatter),
        # not the 3+ reply packets of each connection.
        received = rx_packets(lb) - rx_before
        [(svc, _)], _ = stats(dp.maps)
        assert svc.packets >= 3 * (last - first)  # SYN, ACK, FIN at least
        assert received - svc.packets < 20, (received, svc.packets)

        # The client still sends to a node that is gone: the bridge floods those frames
        # to every port, this node's too. They are not ours: passed, counted, not sent.
        client.run(["ip", "neigh", "replace", "10.98.0.3", "lladdr", GONE_MAC,
                    "dev", "eth0", "nud", "permanent"])  # fmt: skip
        [(svc, _)], _ = stats(dp.maps)  # late segments of the connections above included
        want = pass_counts(dp.maps)[0].packets + 20
        client.run([sys.executable, "-c", SYNS, VIP, str(PORT), "20"])
        deadline = time.monotonic() + 10
        while pass_counts(dp.maps)[0].packets < want and time.monotonic() < deadline:
            time.sleep(0.01)  # frames cross the veth asynchronously; no event to await
        assert pass_counts(dp.maps)[0].packets >= want
        [(after, _)], _ = stats(dp.maps)
        assert after.packets == svc.packets


def test_client_ip_affinity_keeps_each_client_on_one_backend(privileged: None) -> None:
    """sessionAffinity: ClientIP: every connection of a client reaches the same backend
    (12 connections over 2 backends would all agree by chance once in 2048)."""
    with dsr_lab("generic", replace(FRONTEND, affinity="client_ip")) as lab:
        for source in ("10.98.0.2", "10.98.0.21", "10.98.0.22"):
            if source != "10.98.0.2":
                lab.client.run(["ip", "addr", "add", f"{source}/24", "dev", "eth0"])
            out = lab.connect(source, 21000, 21012)
            flow = Flow(source, VIP, 21000, PORT)
            want = lab.backends[predicted_backend(flow, SEED, lab.table, client_ip=True)].name
            assert set(out.values()) == {want}, (source, out)
