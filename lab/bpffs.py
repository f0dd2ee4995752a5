"""bpffs mounts of their own: each LB node (and each data-plane test) pins its maps in a
private bpffs, so nothing touches /sys/fs/bpf and an unmount removes every pin at once.

`ip netns exec` remounts /sys for the command it runs, so a node's bpffs lives outside /sys.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def mount(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True, capture_output=True)
    return path


def unmount(path: Path) -> None:
    """Lazily: a program still holding a pinned map's fd does not keep the mount busy."""
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def mounts_under(top: Path) -> list[Path]:
    """bpffs (or any) mounts below top, from /proc/mounts."""
    with open("/proc/mounts") as f:
        targets = [Path(line.split()[1]) for line in f]
    return [t for t in targets if top in t.parents]


@contextlib.contextmanager
def mounted(prefix: str) -> Iterator[Path]:
    """A private bpffs in a new temporary directory, unmounted and removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix=f"{prefix}-bpffs-"))
    try:
        yield mount(top)
    finally:
        unmount(top)
