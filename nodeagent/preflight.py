"""What a node offers the agent, checked before anything is loaded: the agent logs it at start
(nodeagent/main.py) and `weirctl doctor` prints it, each missing piece with its fix.

    for check in local_checks("eth0", Path("/sys/fs/bpf/weir")):
        print(check.name, check.ok, check.found, check.fix)

- kernel: at least MIN_KERNEL. The XDP program stores words with BPF atomics (5.12) and reads
  the coarse clock (5.11); the backend role's tc program removes the encapsulation with
  bpf_skb_adjust_room's L3 decap flag (5.18).
- kernel headers, for bcc: $BCC_KERNEL_SOURCE (the image's packaged ones), else the host's
  /lib/modules/<release>/build, else the kernel's own (/sys/kernel/kheaders.tar.xz).
- BTF (/sys/kernel/btf/vmlinux): not needed by Weir's programs; reported for bpftool.
- bpffs at the pin directory: pins outlive the agent only there.
- the uplink: it exists, its driver, and the XDP program attached to it now (native,
  generic) if any.
- capabilities: NET_ADMIN, and BPF and PERFMON (or SYS_ADMIN, which covers them); SYS_ADMIN
  too, for bcc to reopen pinned maps when it adopts them; SYS_RESOURCE before 5.11 (locked
  memory for maps).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIN_KERNEL = (5, 18)
CHARGED_TO_CGROUP = (5, 11)  # from then on BPF memory is not locked memory
CAPABILITIES = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}
XDP_MODES = {1: "native", 2: "generic", 3: "offload"}  # IFLA_XDP_ATTACHED
# Drivers with native XDP (the kernel's own list grows; others fall back to generic XDP).
NATIVE_XDP = frozenset(
    "veth virtio_net tun bond mlx4_en mlx5_core i40e ice ixgbe ixgbevf igb igc bnxt_en ena "
    "nfp qede gve hv_netvsc mana sfc thunder_nicvf stmmac dpaa2-eth fec mvneta mvpp2 "
    "tsnep lan966x-switch".split()
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    found: str  # what is there
    fix: str = ""  # what to do when not ok
    required: bool = True  # a failed check that is not required is only reported


def kernel_release(release: str | None = None) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(found[1]), int(found[2])) if found else (0, 0)


def kernel() -> Check:
    release = platform.release()
    ok = kernel_release(release) >= MIN_KERNEL
    need = "{}.{}".format(*MIN_KERNEL)
    return Check(
        "kernel",
        ok,
        f"Linux {release}",
        "" if ok else f"Weir's programs need Linux {need} or later: upgrade the node's kernel",
    )


def headers() -> Check:
    env = os.environ.get("BCC_KERNEL_SOURCE")
    modules = Path("/lib/modules") / platform.release()
    candidates = [Path(env)] if env else [modules / "build", modules / "source"]
    for path in candidates:
        if (path / "include" / "linux" / "kconfig.h").is_file():
            how = "BCC_KERNEL_SOURCE" if env else "the host's"
            return Check("kernel headers", True, f"{path} ({how})")
    if Path("/sys/kernel/kheaders.tar.xz").is_file():
        return Check("kernel headers", True, "the kernel's own (/sys/kernel/kheaders.tar.xz)")
    where = f"BCC_KERNEL_SOURCE={env}" if env else str(modules / "build")
    return Check(
        "kernel headers",
        False,
        f"none ({where} has no include/linux/kconfig.h)",
        "run the Weir image, which carries them (BCC_KERNEL_SOURCE), or install the kernel "
        "headers package for the running kernel",
    )


def btf() -> Check:
    path = Path("/sys/kernel/btf/vmlinux")
    present = path.is_file()
    return Check(
        "BTF",
        present,
        str(path) if present else "none",
        "" if present else "not needed by Weir; bpftool shows maps untyped without it",
        required=False,
    )


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding path (or its nearest parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    best = ("/", "")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        point = fields[0].split()[4].replace("\\040", " ")
        fstype = fields[1].split()[0] if len(fields) > 1 else ""
        if (path == Path(point) or Path(point) in path.parents) and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def bpffs(pin_dir: Path) -> Check:
    point, fstype = mount_of(pin_dir)
    ok = fstype == "bpf"
    return Check(
        "bpffs",
        ok,
        f"{pin_dir} on {fstype or '?'} at {point}",
        ""
        if ok
        else "mount the BPF file system (mount -t bpf bpf /sys/fs/bpf) and give the agent the "
        "host's /sys/fs/bpf (hostPath, mountPropagation: HostToContainer)",
    )


def _driver(interface: str, details: dict) -> str:
    kind = (details.get("linkinfo") or {}).get("info_kind")
    if kind:
        return str(kind)
    driver = Path("/sys/class/net") / interface / "device" / "driver"
    return driver.resolve().name if driver.exists() else "?"


def xdp(interface: str) -> Check:
    try:
        socket.if_nametoindex(interface)
    except OSError:
        return Check(
            "XDP",
            False,
            f"no interface {interface!r}",
            "give the agent the node's uplink (--interface), the one holding its InternalIP",
        )
    details: dict = {}
    if shutil.which("ip"):
        out = subprocess.run(
            ["ip", "-j", "-d", "link", "show", "dev", interface],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0:
            details = (json.loads(out.stdout) or [{}])[0]
    driver = _driver(interface, details)
    attached = details.get("xdp") or {}
    mode = XDP_MODES.get(attached.get("mode", 0))
    if mode:
        prog = (attached.get("prog") or {}).get("id", "?")
        now = f"XDP attached, {mode} (program {prog})"
    else:
        now = "no XDP attached"
    native = driver in NATIVE_XDP
    found = f"{interface}: driver {driver}, {now}; native XDP {'yes' if native else 'unknown'}"
    fix = "" if native else "its driver may lack native XDP: the agent falls back to generic"
    return Check("XDP", True, found, fix)


def effective_capabilities(status: str | None = None) -> int:
    text = status if status is not None else Path("/proc/self/status").read_text()
    found = re.search(r"^CapEff:\s*([0-9a-f]+)", text, re.M)
    return int(found[1], 16) if found else 0


def capabilities(release: tuple[int, int] | None = None, caps: int | None = None) -> Check:
    caps = effective_capabilities() if caps is None else caps
    have = {name for name, bit in CAPABILITIES.items() if caps >> bit & 1}
    needed = {"NET_ADMIN", "SYS_ADMIN"}
    if "SYS_ADMIN" not in have:
        needed |= {"BPF", "PERFMON"}
    if (release or kernel_release()) < CHARGED_TO_CGROUP:
        needed.add("SYS_RESOURCE")
    missing = sorted(needed - have)
    return Check(
        "capabilities",
        not missing,
        ", ".join(sorted(have)) or "none of " + ", ".join(sorted(CAPABILITIES)),
        f"add {', '.join(missing)} to the container's securityContext.capabilities "
        "(deploy/base/agent.yaml says why each)"
        if missing
        else "",
    )


def local_checks(interface: str, pin_dir: Path) -> list[Check]:
    """Every check of this node (blocking: run it in a thread from the event loop)."""
    return [kernel(), headers(), btf(), bpffs(pin_dir), xdp(interface), capabilities()]
