"""Patch formats the fake kube-apiserver accepts: JSON merge patch (RFC 7386), strategic merge
patch (built-in kinds only, as the real server), and JSON patch (RFC 6902).

Strategic merge patch here knows the merge keys of the fields the fake's kinds have, and
rejects the `$`-directives (`$patch`, `$setElementOrder/...`, `$retainKeys`, ...) with an
error rather than silently mis-applying them: the clients under test do not send them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


class PatchError(ValueError):
    """The patch is malformed or cannot be applied (HTTP 422/400 in the fake)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Merge keys of list fields with patchStrategy "merge", by path; "*" matches any map key
# (a list element is entered through its merge key, so paths name fields only).
MergeKeys = Mapping[tuple[str, ...], str | None]  # None: a list of scalars merged as a set


def strategic_merge_patch(target: Any, patch: Any, merge_keys: MergeKeys) -> Any:
    return _smp(target, patch, (), merge_keys)


def _smp(target: Any, patch: Any, path: tuple[str, ...], keys: MergeKeys) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise PatchError(f"fake apiserver: strategic merge directive {key!r} not supported")
        sub = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and sub in keys:
            result[key] = _merge_list(result.get(key) or [], value, sub, keys)
        else:
            result[key] = _smp(result.get(key), value, sub, keys)
    return result


def _merge_list(old: list[Any], new: list[Any], path: tuple[str, ...], keys: MergeKeys) -> list:
    key = keys[path]
    if key is None:  # set of scalars: union, order of the old list first
        return [*old, *(v for v in new if v not in old)]
    merged = [copy.deepcopy(item) for item in old]
    for item in new:
        if not isinstance(item, Mapping) or key not in item:
            raise PatchError(f"{'.'.join(path)}: every element needs its merge key {key!r}")
        for i, existing in enumerate(merged):
            if isinstance(existing, Mapping) and existing.get(key) == item[key]:
                merged[i] = _smp(existing, item, path, keys)
                break
        else:
            merged.append(_smp({}, item, path, keys))
    return merged


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test) with RFC 6901 pointers."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, Mapping) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed JSON patch operation: {op!r}")
        name, path = op["op"], _pointer(op["path"])
        if name == "add":
            doc = _ptr_add(doc, path, copy.deepcopy(_value(op)))
        elif name == "remove":
            doc, _ = _ptr_remove(doc, path)
        elif name == "replace":
            doc, _ = _ptr_remove(doc, path)
            doc = _ptr_add(doc, path, copy.deepcopy(_value(op)))
        elif name in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            if name == "move":
                doc, moved = _ptr_remove(doc, src)
            else:
                moved = copy.deepcopy(_ptr_get(doc, src))
            doc = _ptr_add(doc, path, moved)
        elif name == "test":
            if _ptr_get(doc, path) != _value(op):
                raise PatchError(f"test operation failed at {op['path']}")
        else:
            raise PatchError(f"unknown JSON patch operation {name!r}")
    return doc


def _value(op: Mapping[str, Any]) -> Any:
    if "value" not in op:
        raise PatchError(f"operation {op['op']!r} needs a value")
    return op["value"]


def _pointer(text: str) -> list[str]:
    if text == "":
        return []
    if not text.startswith("/"):
        raise PatchError(f"bad JSON pointer {text!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]


def _index(container: list, token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit():
        raise PatchError(f"bad array index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchError(f"array index {i} out of range")
    return i


def _ptr_get(doc: Any, path: list[str]) -> Any:
    for token in path:
        if isinstance(doc, dict):
            if token not in doc:
                raise PatchError(f"path /{'/'.join(path)} does not exist")
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token, allow_end=False)]
        else:
            raise PatchError(f"path /{'/'.join(path)} does not exist")
    return doc


def _ptr_add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _ptr_get(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"cannot add at /{'/'.join(path)}")
    return doc


def _ptr_remove(doc: Any, path: list[str]) -> tuple[Any, Any]:
    if not path:
        raise PatchError("cannot remove the whole document")
    parent = _ptr_get(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path /{'/'.join(path)} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise PatchError(f"path /{'/'.join(path)} does not exist")
