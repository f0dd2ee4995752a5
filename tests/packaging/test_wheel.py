"""`pip install` of Weir's wheel gives a working Weir.

The wheel is built the way the Dockerfile builds it: from the files its build stage copies
(less what .dockerignore leaves out), with the gRPC stubs generated into proto/weir first.
It is installed, with the bgp extra, into a fresh venv outside the checkout, made by
Debian's python with --system-site-packages so that Debian's python3-bpfcc is seen, as
scripts/setup.sh and the image do. Everything then runs from a directory that is not the
checkout, with the venv's own python and commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from weir.lab.netns import Topology, cleanup_prefix
from weir.nodeagent.dataplane import layout

from tests.dataplane.support import bpffs_mount, missing_privileges
from tests.requirements import requires

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"  # its dist-packages hold python3-bpfcc
CHILD = Path(__file__).with_name("installed_xdp.py")
PREFIX = "wpk"  # this module's namespaces
XDP_ATTACHED_SKB = 2  # generic XDP, as `ip -j link` reports the attach mode


def run(args: Sequence[str | Path], cwd: Path, timeout: float = 120) -> str:
    """Run a command outside the checkout, with no Python path pointing into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(map(str, args))}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def docker_build_sources() -> list[tuple[str, str]]:
    """(source, destination) of every COPY in the Dockerfile's first (build) stage."""
    build_stage = (REPO / "Dockerfile").read_text().split("\nFROM ")[1]
    copies = []
    for line in build_stage.splitlines():
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            for src in sources:
                copies.append((src, f"{dest}{Path(src).name}" if dest.endswith("/") else dest))
    return copies


def dockerignored() -> Callable[[str, list[str]], set[str]]:
    """.dockerignore's patterns by their last component (all of them name files or folders
    that must not reach the build wherever they are)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return shutil.ignore_patterns(*(Path(p).name for p in lines if p and not p.startswith("#")))


@dataclass(frozen=True)
class Installed:
    venv: Path
    outside: Path  # a working directory that is not the checkout

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def run(self, args: Sequence[str | Path], timeout: float = 120) -> str:
        return run(args, self.outside, timeout)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    top = Path(tempfile.mkdtemp(prefix="weir-packaging-"))
    try:
        src, dist, venv = top / "src", top / "dist", top / "venv"
        for source, dest in docker_build_sources():
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, src / dest, ignore=dockerignored())
            else:
                (src / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, src / dest)
        run([sys.executable, src / "scripts" / "gen_proto.py"], top)
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], top)
        (wheel,) = dist.glob("weir-*.whl")
        run([DEBIAN_PYTHON, "-m", "venv", "--system-site-packages", venv], top)
        run([venv / "bin" / "pip", "install", "-q", f"{wheel}[bgp]"], top, timeout=150)
        yield Installed(venv, top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


PROBE = """
import json
from importlib.resources import files
import weir, weir.common.pb, weir.nodeagent._maglev
from weir.nodeplane.v1 import nodeplane_pb2, nodeplane_pb2_grpc
mods = (weir, weir.common.pb, weir.nodeagent._maglev, nodeplane_pb2, nodeplane_pb2_grpc)
print(json.dumps({
    "modules": {m.__name__: m.__file__ for m in mods},
    "bpf": sorted(p.name for p in files("weir.bpf").iterdir() if p.suffix in (".c", ".h")),
}))
"""


def test_the_installed_package_holds_everything(installed: Installed) -> None:
    """Stubs, C extension and BPF sources all come from the venv, none from the checkout."""
    found = json.loads(installed.run([installed.bin("python"), "-I", "-c", PROBE]))
    site = installed.venv / "lib"
    assert all(Path(f).is_relative_to(site) for f in found["modules"].values()), found
    shipped = sorted(p.name for p in (REPO / "bpf").iterdir() if p.suffix in (".c", ".h"))
    assert found["bpf"] == shipped


@pytest.mark.parametrize("command", ["weir-controller", "weir-agent", "weirctl"])
def test_console_scripts_run(installed: Installed, command: str) -> None:
    out = installed.run([installed.bin(command), "--help"])
    assert out.startswith(f"usage: {command} ")


@pytest.mark.root
@requires(missing_privileges)
def test_the_installed_package_loads_and_pins_xdp(installed: Installed) -> None:
    cleanup_prefix(PREFIX)
    with bpffs_mount() as pins, Topology(PREFIX) as topo:
        node = topo.host("node")
        node.run(["ip", "link", "add", "wpk0", "type", "veth", "peer", "name", "wpk1"])
        node.run(["ip", "link", "set", "wpk0", "up"])
        used = json.loads(
            installed.run(
                node.cmd([str(installed.bin("python")), "-I", str(CHILD), "wpk0", str(pins)])
            )
        )
        site = installed.venv / "lib"
        assert Path(used["weir"]).is_relative_to(site) and Path(used["xdp_source"]).is_relative_to(
            site
        )
        assert used["bcc"].startswith("/usr/lib/python3/dist-packages/"), used
        assert used["xdp_mode"] == "generic" and used["applied"] == ["192.0.2.80:80/TCP"]

        # The child has exited: the program stays attached and every map stays pinned.
        (link,) = json.loads(node.run(["ip", "-j", "link", "show", "wpk0"]))
        assert link["xdp"]["mode"] == XDP_ATTACHED_SKB and link["xdp"]["prog"]["id"] > 0, link
        assert {p.name for p in pins.iterdir()} == {*layout.MAPS, layout.PROG_PIN}
        # The installed weirctl reads the service back from those pins.
        out = installed.run([installed.bin("weirctl"), "bpf", "nat", "dump", "--bpffs", pins])
        assert "192.0.2.80 port 80 proto 6 " in out and " count 2 flags maglev" in out, out
