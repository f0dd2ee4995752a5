"""Reading one manifest file of the file source without letting the file hurt the controller.

    documents = read_manifest(path, max_bytes)   # ManifestError says why a file is refused

- Regular files only (a symlink is followed, as ConfigMap mounts need): the file is opened
  non-blocking and checked on the open descriptor, so a FIFO cannot block the reader and a
  device such as /dev/zero cannot be read from.
- At most max_bytes: a bigger file is refused before it is read.
- YAML is checked event by event before it is built into objects. libyaml's parser keeps its
  own stack, but building the objects recurses once per level, so a few kilobytes nested
  thousands of levels deep would overflow the thread's stack and kill the process: nesting
  is limited to MAX_DEPTH levels. Aliases are counted as the nodes they expand to, and
  limited to MAX_ALIAS_NODES, so a few lines of anchors cannot stand for billions of nodes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

# Kubernetes objects nest a few levels deep (a List of EndpointSlices: under 10).
MAX_DEPTH = 64
MAX_ALIAS_NODES = 100_000
DEFAULT_MAX_BYTES = 4 * 2**20

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_START = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_END = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class ManifestError(Exception):
    """The file is not one the file source reads; the message says why."""


def read_manifest(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Any]:
    """The YAML (or JSON) documents of one file; ManifestError, yaml.YAMLError or
    UnicodeDecodeError when it cannot be read."""
    text = _read_text(path, max_bytes)
    _check_shape(text)
    return list(yaml.load_all(text, Loader=_LOADER))


def _read_text(path: Path, max_bytes: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise ManifestError(f"{what}, not a regular file")
        if st.st_size > max_bytes:
            raise ManifestError(_too_big(st.st_size, max_bytes))
        chunks = []
        left = max_bytes + 1  # the file may grow after fstat
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ManifestError(_too_big(len(data), max_bytes))
    return data.decode("utf-8")


def _too_big(size: int, max_bytes: int) -> str:
    return f"{size} bytes, more than the limit of {max_bytes} (--manifest-max-bytes)"


def _check_shape(text: str) -> None:
    """ManifestError when the documents nest too deep or their aliases expand too much."""
    depth = 0
    nodes = 0  # nodes so far, counting what aliases expand to
    via_aliases = 0
    open_nodes: list[tuple[str | None, int, int]] = []  # (anchor, nodes before, depth)
    anchors: dict[str | None, tuple[int, int]] = {}  # anchor -> (nodes, levels) of its node
    deepest = 0  # deepest level reached under each open collection
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, _START):
            depth += 1
            _check_depth(depth)
            open_nodes.append((event.anchor, nodes, deepest))
            deepest = depth
            nodes += 1
        elif isinstance(event, _END):
            anchor, before, outer = open_nodes.pop()
            if anchor is not None:
                anchors[anchor] = (nodes - before, deepest - depth + 1)
            deepest = max(outer, deepest)
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 1)
        elif isinstance(event, yaml.AliasEvent):
            count, levels = anchors.get(event.anchor, (1, 1))
            _check_depth(depth + levels)
            deepest = max(deepest, depth + levels)
            nodes += count
            via_aliases += count
            if via_aliases > MAX_ALIAS_NODES:
                raise ManifestError(f"its aliases expand to more than {MAX_ALIAS_NODES} nodes")


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ManifestError(f"nested more than {MAX_DEPTH} levels deep")
