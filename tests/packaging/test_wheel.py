"""`pip install` of Weir's wheel gives a working Weir.

The wheel is built the way the Dockerfile builds it: from the files its build stage copies
(less what .dockerignore leaves out), with the gRPC stubs generated into proto/weir first.
It is installed, with the bgp extra, into a fresh venv outside the checkout, made by
Debian's python with --system-site-packages so that Debian's python3-bpfcc is seen, as
scripts/setup.sh and the image do. Everything then runs from a directory that is not the
checkout, with the venv's own python and commands.

The image's kernel headers: scripts/kernel_headers.sh makes the tree, as the Dockerfile's
headers stage does, from the Debian linux-headers packages installed here (the stage unpacks
the same packages). The installed agent runs with /usr/src and /lib/modules empty, a host
without headers: without the tree nothing compiles, and with it, found through
BCC_KERNEL_SOURCE as the image's ENV says, both of its programs load; weirctl doctor says
which.
"""

from __future__ import annotations

import json
import os
import re
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


# Variables that would point the commands at the checkout or at other headers.
UNSET = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "BCC_KERNEL_SOURCE")


def attempt(
    args: Sequence[str | Path], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command outside the checkout, with no Python path pointing into it."""
    base = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run(
    args: Sequence[str | Path], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> str:
    """attempt() that must succeed; its output."""
    proc = attempt(args, cwd, timeout, env)
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

    def attempt(
        self, args: Sequence[str | Path], timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return attempt(args, self.outside, timeout, env)

    def run(
        self, args: Sequence[str | Path], timeout: float = 120, env: dict[str, str] | None = None
    ) -> str:
        return run(args, self.outside, timeout, env)


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
import weir, weir.common.pb, weir.nodeagent._maglev, weir.nodeagent.health._tcpcheck
from weir.nodeplane.v1 import nodeplane_pb2, nodeplane_pb2_grpc
mods = (weir, weir.common.pb, weir.nodeagent._maglev, weir.nodeagent.health._tcpcheck,
        nodeplane_pb2, nodeplane_pb2_grpc)
print(json.dumps({
    "modules": {m.__name__: m.__file__ for m in mods},
    "bpf": sorted(p.name for p in files("weir.bpf").iterdir() if p.suffix in (".c", ".h")),
}))
"""


def test_the_installed_package_holds_everything(installed: Installed) -> None:
    """Stubs, C extensions and BPF sources all come from the venv, none from the checkout."""
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
        assert {p.name for p in pins.iterdir()} == {*layout.MAPS, layout.FLOW_LOG, layout.PROG_PIN}
        # The installed weirctl reads the service back from those pins.
        out = installed.run([installed.bin("weirctl"), "bpf", "nat", "dump", "--bpffs", pins])
        assert "192.0.2.80 port 80 proto 6 " in out and " count 2 flags maglev" in out, out


def dockerfile_env(name: str) -> str:
    """The value the Dockerfile's ENV lines give name."""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            for assignment in line.split()[1:]:
                key, _, value = assignment.partition("=")
                if key == name:
                    return value
    raise AssertionError(f"the Dockerfile sets no {name}")


def image_headers() -> str:
    """Where the image's bcc looks for headers (BCC_KERNEL_SOURCE), checked to be the tree the
    headers stage makes with scripts/kernel_headers.sh and the final stage copies."""
    where = dockerfile_env("BCC_KERNEL_SOURCE")
    text = (REPO / "Dockerfile").read_text()
    stage = text.split("\nFROM debian:12-slim AS headers\n")[1].split("\nFROM ")[0]
    made = re.search(r"kernel_headers\.sh (\S+) (\S+)", stage)
    assert made and made[2] == where, stage
    assert f"\nCOPY --from=headers {where} {where}\n" in text
    return where


def no_debian_headers() -> str:
    """Debian's linux-headers packages, installed: the ones the image's headers stage unpacks."""
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    found = any(Path("/usr/src").glob(f"linux-headers-*-{arch}"))
    return "" if found else "needs Debian's linux-headers package (scripts/setup.sh)"


# A host without kernel headers, for the command that follows: empty /usr/src and /lib/modules,
# and the kernel's own headers (CONFIG_IKHEADERS) hidden, as bcc would fall back to them.
WITHOUT_HOST_HEADERS = [
    "unshare", "-m", "sh", "-c",
    "mount -t tmpfs none /usr/src && mount -t tmpfs none /lib/modules"
    " && if [ -e /sys/kernel/kheaders.tar.xz ];"
    " then mount --bind /dev/null /sys/kernel/kheaders.tar.xz; fi"
    ' && exec "$@"',
    "sh",
]  # fmt: skip


@pytest.mark.root
@requires(missing_privileges, no_debian_headers)
def test_the_agent_loads_its_programs_with_the_images_headers_only(installed: Installed) -> None:
    headers = installed.outside / image_headers().lstrip("/")  # the image's tree, made alike
    run(["sh", REPO / "scripts" / "kernel_headers.sh", "/", headers], REPO)
    image_env = {"BCC_KERNEL_SOURCE": str(headers)}
    cleanup_prefix(PREFIX)
    with bpffs_mount() as pins, Topology(PREFIX) as topo:
        node = topo.host("node")
        node.run(["ip", "link", "add", "wpk0", "type", "veth", "peer", "name", "wpk1"])
        node.run(["ip", "link", "set", "wpk0", "up"])
        child = [str(installed.bin("python")), "-I", str(CHILD), "wpk0", str(pins), "tc"]
        doctor = [str(installed.bin("weirctl")), "doctor", "--interface", "wpk0", "-o", "json"]

        # Without the image's headers the host has none to offer: nothing compiles.
        bare = installed.attempt(node.cmd([*WITHOUT_HOST_HEADERS, *child]))
        assert bare.returncode != 0 and "Failed to compile BPF module" in bare.stderr, bare.stderr
        assert f"chdir(/lib/modules/{os.uname().release}/build)" in bare.stderr, bare.stderr
        out = installed.attempt(node.cmd([*WITHOUT_HOST_HEADERS, *doctor]), timeout=60).stdout
        (check,) = [c for c in json.loads(out) if c["name"] == "kernel headers"]
        assert not check["ok"] and "Weir image" in check["fix"], check

        # With them, both programs compile, load and attach; the agent's preflight says so.
        loaded = installed.run(node.cmd([*WITHOUT_HOST_HEADERS, *child]), env=image_env)
        used = json.loads(loaded)
        assert used["applied"] == ["192.0.2.80:80/TCP"] and used["tc"], used
        (link,) = json.loads(node.run(["ip", "-j", "link", "show", "wpk0"]))
        assert link["xdp"]["prog"]["id"] > 0, link
        out = installed.attempt(
            node.cmd([*WITHOUT_HOST_HEADERS, *doctor]), timeout=60, env=image_env
        ).stdout
        (check,) = [c for c in json.loads(out) if c["name"] == "kernel headers"]
        assert check["ok"] and check["found"] == f"{headers} (BCC_KERNEL_SOURCE)", check
