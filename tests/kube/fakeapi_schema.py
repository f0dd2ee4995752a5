"""What the real kube-apiserver does to a custom resource with its CRD's structural OpenAPI v3
schema, in its order: prune unknown fields, apply defaults, validate.

Covered: type, properties, additionalProperties, items, required, enum, nullable, minimum,
maximum, exclusive bounds, minLength, maxLength, minItems, maxItems, pattern, the formats the
server checks that Weir's CRDs use (ipv4, ipv6, cidr, date-time, int32, int64), x-kubernetes-
preserve-unknown-fields, x-kubernetes-int-or-string, x-kubernetes-list-type (set and map: no
two items alike, or with the same keys), anyOf/oneOf/allOf/not (validation only).
Not covered: CEL rules (x-kubernetes-validations) are not evaluated, so a CRD must not rely on
them for anything the code or the tests need.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

ROOT_FIELDS = ("apiVersion", "kind", "metadata")


def prune(obj: Any, schema: Mapping[str, Any]) -> Any:
    """Drop the fields the schema does not know (structural pruning)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        out = {}
        for key, value in obj.items():
            if props is not None and key in props:
                out[key] = prune(value, props[key])
            elif isinstance(addl, Mapping):
                out[key] = prune(value, addl)
            elif schema.get("x-kubernetes-preserve-unknown-fields") or addl is True:
                out[key] = value
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        return [prune(v, schema["items"]) for v in obj]
    return obj


def prune_resource(obj: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Prune a whole custom resource: apiVersion, kind and metadata are never pruned."""
    body = {k: v for k, v in obj.items() if k not in ROOT_FIELDS}
    pruned = prune(body, schema)
    return {**{k: obj[k] for k in ROOT_FIELDS if k in obj}, **pruned}


def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(obj[key], sub)
        addl = schema.get("additionalProperties")
        if isinstance(addl, Mapping):
            for key in obj:
                if key not in props:
                    obj[key] = apply_defaults(obj[key], addl)
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(v, schema["items"]) for v in obj]
    return obj


def validate(obj: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Return the validation errors as 'path: message' strings (empty when valid)."""
    errs: list[str] = []
    where = path or "<root>"
    if obj is None:
        if not schema.get("nullable"):
            errs.append(f"{where}: Invalid value: null: must not be null")
        return errs
    typ = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(obj, str) or _is_int(obj)):
            errs.append(f"{where}: Invalid value: must be an integer or a string")
    elif typ and not _type_ok(obj, typ):
        errs.append(f"{where}: Invalid value: {type(obj).__name__}: must be of type {typ}")
        return errs
    if "enum" in schema and obj not in schema["enum"]:
        errs.append(f"{where}: Unsupported value: {obj!r}: supported values: {schema['enum']}")
    errs += _bounds(obj, schema, where)
    if isinstance(obj, dict):
        for req in schema.get("required", []):
            if req not in obj:
                errs.append(f"{path + '.' if path else ''}{req}: Required value")
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        for key, value in obj.items():
            sub = props.get(key) if key in props else addl if isinstance(addl, Mapping) else None
            if sub is not None:
                errs += validate(value, sub, f"{path}.{key}" if path else key)
    if isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for i, value in enumerate(obj):
            errs += validate(value, schema["items"], f"{path}[{i}]")
    if isinstance(obj, list):
        errs += _list_type(obj, schema, path)
    errs += _combinators(obj, schema, path)
    return errs


def _list_type(obj: list[Any], schema: Mapping[str, Any], path: str) -> list[str]:
    """A set holds no item twice; a map no two items with the same values of its keys."""
    kind = schema.get("x-kubernetes-list-type")
    keys = schema.get("x-kubernetes-list-map-keys") or ()
    errs: list[str] = []
    seen: list[Any] = []
    for i, item in enumerate(obj):
        if kind == "map" and isinstance(item, Mapping):
            key: Any = {k: item.get(k) for k in keys}
        elif kind == "set":
            key = item
        else:
            continue
        if key in seen:
            errs.append(f"{path}[{i}]: Duplicate value: {key!r}")
        seen.append(key)
    return errs


def _combinators(obj: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    errs: list[str] = []
    where = path or "<root>"
    for sub in schema.get("allOf", []):
        errs += validate(obj, sub, path)
    if "anyOf" in schema and all(validate(obj, s, path) for s in schema["anyOf"]):
        errs.append(f"{where}: Invalid value: must match at least one schema in anyOf")
    if "oneOf" in schema:
        matches = sum(not validate(obj, s, path) for s in schema["oneOf"])
        if matches != 1:
            errs.append(f"{where}: Invalid value: must match exactly one schema in oneOf")
    if "not" in schema and not validate(obj, schema["not"], path):
        errs.append(f"{where}: Invalid value: must not match the schema in not")
    return errs


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, float) and v.is_integer()
    )


def _type_ok(v: Any, typ: str) -> bool:
    return {
        "object": lambda: isinstance(v, dict),
        "array": lambda: isinstance(v, list),
        "string": lambda: isinstance(v, str),
        "boolean": lambda: isinstance(v, bool),
        "integer": lambda: _is_int(v),
        "number": lambda: isinstance(v, int | float) and not isinstance(v, bool),
    }.get(typ, lambda: True)()


def _bounds(obj: Any, s: Mapping[str, Any], where: str) -> list[str]:
    errs: list[str] = []
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        if "minimum" in s and (
            obj < s["minimum"] or (s.get("exclusiveMinimum") and obj == s["minimum"])
        ):
            errs.append(f"{where}: Invalid value: {obj}: must be >= {s['minimum']}")
        if "maximum" in s and (
            obj > s["maximum"] or (s.get("exclusiveMaximum") and obj == s["maximum"])
        ):
            errs.append(f"{where}: Invalid value: {obj}: must be <= {s['maximum']}")
        fmt = s.get("format")
        limit = {"int32": 2**31, "int64": 2**63}.get(fmt or "")
        if limit and not -limit <= obj < limit:
            errs.append(f"{where}: Invalid value: {obj}: out of range for {fmt}")
    if isinstance(obj, str):
        if "minLength" in s and len(obj) < s["minLength"]:
            errs.append(f"{where}: Invalid value: {obj!r}: shorter than {s['minLength']}")
        if "maxLength" in s and len(obj) > s["maxLength"]:
            errs.append(f"{where}: Too long: may not be longer than {s['maxLength']}")
        if "pattern" in s and not re.search(s["pattern"], obj):
            errs.append(f"{where}: Invalid value: {obj!r}: should match {s['pattern']!r}")
        if not _format_ok(obj, s.get("format")):
            errs.append(f"{where}: Invalid value: {obj!r}: must be of format {s['format']}")
    if isinstance(obj, list):
        if "minItems" in s and len(obj) < s["minItems"]:
            errs.append(f"{where}: Invalid value: should have at least {s['minItems']} items")
        if "maxItems" in s and len(obj) > s["maxItems"]:
            errs.append(f"{where}: Too many: must have at most {s['maxItems']} items")
    return errs


def _format_ok(value: str, fmt: str | None) -> bool:
    try:
        if fmt == "ipv4":
            ipaddress.IPv4Address(value)
        elif fmt == "ipv6":
            ipaddress.IPv6Address(value)
        elif fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
        elif fmt == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
