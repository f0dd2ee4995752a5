"""The file source: a directory of Kubernetes YAML, the embedded default for running without a
cluster.

Every `*.yaml`, `*.yml` and `*.json` file under the directory (hidden files and directories
skipped, which also skips the `..data` folders of a mounted ConfigMap) may hold several
documents, and `kind: List` (or any `*List`) documents with `items`. Files are polled every
`poll_interval` seconds (mtime, size, inode): no inotify dependency, edits show within a second.

A file's new content is read once it has settled: unchanged for `settle` seconds, so a file
being written in place is not read half-written. A file replaced by a rename (what editors,
`kubectl ... > tmp && mv tmp file` and ConfigMap updates do: the path names a new inode) is
complete by then and is read at once. Only regular files (or symlinks to them) of at most
`max_bytes` are read, and their YAML may not nest deeper than manifest.MAX_DEPTH levels
(controller/sources/manifest.py); anything else is an error on that file.

After any change the whole directory's objects go to the sink as one full list, so removing a
file removes its objects. A file that does not parse is reported as an ObjectError of kind
"File" named by its path, and keeps contributing its last good objects (an editor saving half a
file must not take Services down); the other files are unaffected. An object defined in two
files is taken from the first path in sorted order, with an error naming both.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.objects import ALL_KINDS, object_ref
from weir.controller.sources.base import StateSink
from weir.controller.sources.manifest import DEFAULT_MAX_BYTES, ManifestError, read_manifest

log = get_logger("weir.controller.files")

FILE_KIND = "File"
SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_SETTLE = 0.5

Stamp = tuple[int, int, int]  # (mtime_ns, size, inode)


@dataclass
class _File:
    stamp: Stamp
    objects: list[Mapping[str, Any]] = field(default_factory=list)  # last good content
    errors: list[str] = field(default_factory=list)  # of the current content


class FileSource:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        poll_interval: float = 0.25,
        *,
        settle: float = DEFAULT_SETTLE,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self.settle = settle
        self.max_bytes = max_bytes
        self.origin = f"files:{self.directory}"
        self._files: dict[Path, _File] = {}
        # Changed content waiting to settle: path -> (its stamp, monotonic time first seen).
        self._unsettled: dict[Path, tuple[Stamp, float]] = {}
        self._dir_error = ""
        self._published_errors: list[pb.ObjectError] | None = None

    async def run(self, sink: StateSink) -> None:
        """Load the directory, then follow its changes until cancelled.

        The first full list waits for the files being written at start to settle (for a few
        windows at most: a file rewritten without pause must not hold up the others)."""
        first = True
        first_by = time.monotonic() + max(2.0, 4 * self.settle)
        while True:
            try:
                changed = await asyncio.to_thread(self._refresh)
                if first and self._unsettled and time.monotonic() < first_by:
                    pass
                elif changed or first:
                    self._publish(sink)
                    first = False
            except Exception:
                # A bug here must not stop the source: the state keeps the last good objects.
                log.exception("reading the manifests failed; retrying")
            await asyncio.sleep(self._next_poll())

    def _next_poll(self) -> float:
        """Seconds until the next look: the poll interval, or less when a change settles."""
        if not self._unsettled:
            return self.poll_interval
        settles = min(seen for _, seen in self._unsettled.values()) + self.settle
        return max(0.01, min(self.poll_interval, settles - time.monotonic()))

    # -- runs in a worker thread: file system access only, no sink calls ----------------------

    def _refresh(self) -> bool:
        """Re-read changed files; True when anything was added, changed or removed."""
        try:
            paths = self._list()
            dir_error = ""
        except OSError as e:
            paths, dir_error = [], f"cannot read the manifests directory: {e.strerror or e}"
        changed = dir_error != self._dir_error
        self._dir_error = dir_error
        seen: set[Path] = set()
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue  # removed between listing and stat: gone next round too
            seen.add(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            known = self._files.get(path)
            if known is not None and known.stamp == stamp:
                self._unsettled.pop(path, None)
                continue
            if not self._settled(path, stamp, known):
                continue  # its last content (if any) stays until the new one is complete
            self._unsettled.pop(path, None)
            self._files[path] = _load(path, stamp, known, self.max_bytes)
            changed = True
        for path in set(self._files) - seen:
            del self._files[path]
            changed = True
        for path in set(self._unsettled) - seen:
            del self._unsettled[path]
        return changed

    def _settled(self, path: Path, stamp: Stamp, known: _File | None) -> bool:
        """Whether the content with this stamp is complete enough to read."""
        if known is not None and known.stamp[2] != stamp[2]:
            return True  # renamed over the old file: written in full before the rename
        if time.time_ns() - stamp[0] >= self.settle * 1e9:
            return True  # not modified for the window (files there at start, mostly)
        now = time.monotonic()
        pending = self._unsettled.get(path)
        if pending is None or pending[0] != stamp:
            self._unsettled[path] = (stamp, now)
            return False
        return now - pending[1] >= self.settle

    def _list(self) -> list[Path]:
        if not self.directory.is_dir():
            raise FileNotFoundError(2, f"{self.directory} is not a directory")
        out: list[Path] = []
        visited: set[str] = set()  # real paths: a symlink loop must not make us walk forever
        for root, dirs, names in os.walk(self.directory, followlinks=True):
            real = os.path.realpath(root)
            if real in visited:
                dirs[:] = []
                continue
            visited.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out.extend(
                Path(root, n) for n in names if n.endswith(SUFFIXES) and not n.startswith(".")
            )
        return sorted(out)

    # -- on the event loop ---------------------------------------------------------------------

    def _publish(self, sink: StateSink) -> None:
        errors: list[pb.ObjectError] = []
        if self._dir_error:
            errors.append(_file_error(self.directory, self._dir_error))
        objects: list[Mapping[str, Any]] = []
        first_seen: dict[tuple[str, str, str], Path] = {}
        for path in sorted(self._files):
            f = self._files[path]
            errors.extend(_file_error(path, msg) for msg in f.errors)
            for obj in f.objects:
                ref = object_ref(obj)
                if ref.kind in ALL_KINDS and ref.name:
                    first = first_seen.setdefault(ref, path)
                    if first != path:
                        errors.append(
                            pb.ObjectError(
                                kind=ref.kind,
                                namespace=ref.namespace,
                                name=ref.name,
                                message=f"defined in {first} and again in {path}; "
                                f"the copy in {path} is ignored",
                            )
                        )
                        continue
                objects.append(obj)
        if errors != self._published_errors:
            sink.clear_errors(self.origin)
            for err in errors:
                sink.report_error(err, self.origin)
            self._published_errors = errors
        sink.replace(ALL_KINDS, objects, self.origin)
        log.debug("manifests loaded", files=len(self._files), objects=len(objects))


def _load(path: Path, stamp: Stamp, known: _File | None, max_bytes: int) -> _File:
    try:
        docs = read_manifest(path, max_bytes)
    except Exception as e:  # YAMLError, OSError, but also e.g. ValueError for 2024-13-45
        keep = known.objects if known is not None else []
        note = "; keeping its last good objects" if keep else ""
        what = "not read" if isinstance(e, ManifestError) else "unparsable"
        return _File(stamp, keep, [f"{what}: {_one_line(e)}{note}"])
    objects: list[Mapping[str, Any]] = []
    errors: list[str] = []
    for i, doc in enumerate(docs, start=1):
        _collect(doc, f"document {i}", objects, errors)
    return _File(stamp, objects, errors)


def _collect(doc: Any, where: str, objects: list[Mapping[str, Any]], errors: list[str]) -> None:
    if doc is None:
        return  # an empty document (a stray "---")
    if not isinstance(doc, Mapping):
        errors.append(f"{where}: not an object but {type(doc).__name__}")
        return
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        errors.append(f"{where}: has no kind")
        return
    if kind.endswith("List") and "items" in doc:
        items = doc.get("items") or []
        if not isinstance(items, list):
            errors.append(f"{where}: items is not a list")
            return
        for j, item in enumerate(items):
            _collect(item, f"{where} item {j}", objects, errors)
        return
    objects.append(doc)


def _file_error(path: Path, message: str) -> pb.ObjectError:
    return pb.ObjectError(kind=FILE_KIND, name=str(path), message=message)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
