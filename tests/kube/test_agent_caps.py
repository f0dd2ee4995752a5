"""The agent DaemonSet's capabilities against the real data plane: a process holding exactly
the rendered set compiles the XDP program with bcc, loads, attaches and pins it, programs a
service, and a second open (a restarted agent) adopts the pinned maps and the attached
program (kept, not replaced) before it detaches. Without NET_ADMIN it cannot attach; without
SYS_ADMIN the second open fails in bcc itself, which reopens an existing BPF_TABLE_PINNED map
by id (BPF_MAP_GET_FD_BY_ID, CAP_SYS_ADMIN only); when bcc stops doing that, this test says
to drop SYS_ADMIN. SYS_ADMIN also covers what BPF and PERFMON grant (the kernel accepts
either), so those two cannot be shown necessary while it is there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from weir.lab import bpffs
from weir.lab.netns import Topology, cleanup_prefix

from tests.requirements import require, root

from .conftest import REPO, render_deploy

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(180)]

PREFIX = "wdr"  # this test's namespaces and links

CAP_NUMBERS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}

CHILD = r"""
import sys
from pathlib import Path
from weir.nodeagent.dataplane import BackendTarget, Dataplane, DataplaneConfig, Frontend
from weir.nodeagent.dataplane import bpfsys, loader
from weir.nodeagent.maglev import backend_id, build_table

status = open("/proc/self/status").read()
print(next(l for l in status.splitlines() if l.startswith("CapEff")), flush=True)
cfg = DataplaneConfig(interface="eth0", bpffs=Path(sys.argv[1]), xdp_mode="generic",
                      max_services=64, max_backends=1024, max_table_slots=16 * 4096,
                      conntrack_entries=4096)
fe = Frontend("192.0.2.1:80/TCP", "192.0.2.1", 80, 6, "maglev")
bes = [BackendTarget("10.77.0.2", 8080, bytes.fromhex("020000000002"))]
table = build_table([backend_id("10.77.0.2", 8080, "TCP")], 251)


def attached():
    return bpfsys.xdp_query(loader.interface_index("eth0")).prog_id


dp = Dataplane.open(cfg)
dp.set_seed(7)
assert dp.apply_service(fe, bes, table) is True
prog = attached()
dp.close()  # no detach: the program keeps forwarding from the pinned maps
dp = Dataplane.open(cfg)  # a restarted agent
assert attached() == prog, "the attached program was replaced instead of adopted"
assert dp.apply_service(fe, bes, table) is False  # the pinned maps already hold it
print("adopted", sorted(dp.applied()), flush=True)
dp.close(detach=True)
assert attached() == 0
print("detached", flush=True)
"""


def available_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd"):
            return int(line.split()[1], 16)
    return 0


def run_data_plane(caps: list[str]) -> subprocess.CompletedProcess[str]:
    """The data plane in a fresh namespace and bpffs, with exactly these capabilities."""
    cleanup_prefix(PREFIX)
    with bpffs.mounted(PREFIX) as pins, Topology(PREFIX) as topo:
        lb = topo.host("lb")
        topo.link(lb, topo.bridge("br"), "10.77.0.1/24")
        bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
        cmd = lb.cmd(
            [
                "setpriv",
                f"--bounding-set={bounding}",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--",
                sys.executable,
                "-c",
                CHILD,
                str(pins / "weir"),
            ]
        )
        return subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=REPO)


def test_rendered_capabilities_run_the_data_plane() -> None:
    require(root)
    (ds,) = [d for d in render_deploy() if d["kind"] == "DaemonSet"]
    wanted = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    have = available_caps()
    # This machine's own bounding set may lack some (SYS_RESOURCE here): those cannot be
    # tested, and the rest must then be enough on their own.
    caps = [c for c in wanted["add"] if have >> CAP_NUMBERS[c] & 1]
    assert {"BPF", "NET_ADMIN"} <= set(caps), f"cannot test without {wanted['add']}"
    proc = run_data_plane(caps)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eff = int(proc.stdout.splitlines()[0].split()[1], 16)
    assert eff == sum(1 << CAP_NUMBERS[c] for c in caps), hex(eff)
    assert "adopted ['192.0.2.1:80/TCP']" in proc.stdout
    assert "detached" in proc.stdout
    # What each capability is needed for: the message that names it when it is missing.
    needed = {"NET_ADMIN": "Operation not permitted", "SYS_ADMIN": "could not open bpf map"}
    for cap, symptom in needed.items():
        if cap in caps:
            without = run_data_plane([c for c in caps if c != cap])
            assert without.returncode != 0, f"{cap} is granted but not needed any more"
            assert symptom in without.stderr, without.stderr[-3000:]
