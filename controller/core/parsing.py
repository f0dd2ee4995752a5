"""Small readers for Kubernetes JSON-shaped input that fail with a message naming the field.

Everything here raises ParseError (never KeyError/TypeError) so a bad object becomes a clear
error on that object instead of crashing the controller.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple

EMPTY_MAP: Mapping[str, str] = MappingProxyType({})

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class ParseError(ValueError):
    """An object (or one of its fields) is not what Weir expects; the message says why."""


@dataclass(frozen=True)
class NameRule:
    """A name format of Kubernetes' validation (apimachinery's IsDNS1123Subdomain, ...)."""

    what: str
    pattern: re.Pattern[str]
    max_length: int

    def problem(self, name: str) -> str | None:
        """Why name breaks the rule, or None. Never quotes the name: it may be anything."""
        if len(name) > self.max_length:
            return f"longer than {self.max_length} characters"
        if not self.pattern.fullmatch(name):
            return f"not {self.what}"
        return None


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# Nodes, EndpointSlices, Secrets and custom resources.
DNS_SUBDOMAIN = NameRule(
    "a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')",
    re.compile(rf"{_LABEL}(\.{_LABEL})*"),
    253,
)
# Namespaces.
DNS_LABEL = NameRule("a DNS-1123 label (lowercase letters, digits and '-')", re.compile(_LABEL), 63)
# Services: a DNS-1035 label also starts with a letter.
DNS1035_LABEL = NameRule(
    "a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)",
    re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?"),
    63,
)

# Addresses that cannot be a VIP: no router forwards them to a load balancer.
NOT_VIPS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("0.0.0.0/32", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    """A mapping, or {} when the field is absent (null)."""
    if value is None:
        return EMPTY_MAP
    if not isinstance(value, Mapping):
        raise ParseError(f"{path}: expected an object, got {_kind(value)}")
    return value


def sequence(value: Any, path: str) -> Sequence[Any]:
    """A list, or () when the field is absent (null)."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ParseError(f"{path}: expected a list, got {_kind(value)}")
    return value


def string(value: Any, path: str, *, required: bool = False) -> str:
    """A string; "" when absent and not required."""
    if value is None or value == "":
        if required:
            raise ParseError(f"{path}: required")
        return ""
    if not isinstance(value, str):
        raise ParseError(f"{path}: expected a string, got {_kind(value)}")
    return value


def integer(value: Any, path: str, lo: int, hi: int, *, default: int | None = None) -> int:
    """An integer in [lo, hi]; numeric strings are accepted (annotations are strings)."""
    if value is None:
        if default is None:
            raise ParseError(f"{path}: required")
        return default
    if isinstance(value, bool):
        raise ParseError(f"{path}: expected an integer, got a boolean")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise ParseError(f"{path}: {value!r} is not an integer") from None
    if not isinstance(value, int):
        raise ParseError(f"{path}: expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise ParseError(f"{path}: {value} is out of range [{lo}, {hi}]")
    return value


def boolean(value: Any, path: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParseError(f"{path}: expected true or false, got {_kind(value)}")
    return value


def string_map(value: Any, path: str) -> Mapping[str, str]:
    """Labels or annotations: a read-only str -> str mapping."""
    raw = mapping(value, path)
    if not raw:
        return EMPTY_MAP
    out: dict[str, str] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ParseError(f"{path}: keys and values must be strings ({k!r}: {_kind(v)})")
        out[k] = v
    return MappingProxyType(out)


def seconds(value: Any, path: str, lo: int, hi: int, *, default: int) -> int:
    """Whole seconds from an integer or a Go duration string ("90s", "1m30s")."""
    if isinstance(value, str) and not value.strip().isdigit():
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ParseError(f'{path}: {value!r} is not a duration (e.g. 90 or "1m30s")')
        total = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        if total > hi:
            raise ParseError(f"{path}: {value!r} is out of range [{lo}, {hi}] seconds")
        value = round(total)
    return integer(value, path, lo, hi, default=default)


def canonical_ip(value: Any, path: str) -> tuple[str, bytes]:
    """(canonical text, packed bytes) of an IPv4 or IPv6 literal.

    The canonical text makes "2001:DB8::1" and "2001:db8::1" one VIP; the packed bytes sort
    numerically (IPv4 first, being shorter) and tell the family by their length.
    """
    if not isinstance(value, str):
        raise ParseError(f"{path}: expected an IP address, got {_kind(value)}")
    try:
        if ":" in value:
            packed = socket.inet_pton(socket.AF_INET6, value)
            return socket.inet_ntop(socket.AF_INET6, packed), packed
        packed = socket.inet_pton(socket.AF_INET, value)
        return value, packed
    except OSError:
        raise ParseError(f"{path}: {value!r} is not an IP address") from None


def vip(value: Any, path: str) -> str:
    """The canonical text of an address usable as a VIP (see NOT_VIPS)."""
    text = canonical_ip(value, path)[0]
    addr = ipaddress.ip_address(text)
    for net, what in NOT_VIPS:
        if addr in net:
            raise ParseError(f"{path}: {text} is a {what} address, which cannot be a VIP")
    return text


def name(value: Any, path: str, rule: NameRule) -> str:
    """A required name that follows rule."""
    text = string(value, path, required=True)
    problem = rule.problem(text)
    if problem is not None:
        raise ParseError(f"{path}: {problem}")
    return text


class Metadata(NamedTuple):
    """The metadata every kind shares."""

    namespace: str  # "" for cluster-scoped kinds, "default" when a namespaced one has none
    name: str
    uid: str
    created: datetime | None  # creationTimestamp (None in hand-written files)
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    resource_version: str  # "" in hand-written files
    generation: int  # 0 where the kind (or a hand-written file) has none
    finalizers: tuple[str, ...]
    deleting: bool  # deletionTimestamp is set: the object goes once its finalizers are gone


def metadata(
    obj: Mapping[str, Any],
    *,
    namespaced: bool,
    api_version: str | None = None,
    name_rule: NameRule = DNS_SUBDOMAIN,
) -> Metadata:
    """obj's metadata; api_version, when given, is the only apiVersion accepted. Names (and
    namespaces) are checked as the API server checks them: name_rule is the kind's."""
    if api_version is not None and obj.get("apiVersion") != api_version:
        raise ParseError(f"apiVersion: {obj.get('apiVersion')!r} is not {api_version}")
    meta = mapping(obj.get("metadata"), "metadata")
    obj_name = name(meta.get("name"), "metadata.name", name_rule)
    ns = ""
    if namespaced:
        raw_ns = meta.get("namespace")
        ns = "default" if raw_ns in (None, "") else name(raw_ns, "metadata.namespace", DNS_LABEL)
    created = None
    ts = meta.get("creationTimestamp")
    if ts is not None:
        if isinstance(ts, datetime):  # YAML turns unquoted timestamps into datetimes
            created = ts
        else:
            try:
                created = datetime.fromisoformat(string(ts, "metadata.creationTimestamp"))
            except ValueError:
                raise ParseError(f"metadata.creationTimestamp: {ts!r} is not a time") from None
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
    return Metadata(
        namespace=ns,
        name=obj_name,
        uid=string(meta.get("uid"), "metadata.uid"),
        created=created,
        labels=string_map(meta.get("labels"), "metadata.labels"),
        annotations=string_map(meta.get("annotations"), "metadata.annotations"),
        resource_version=string(meta.get("resourceVersion"), "metadata.resourceVersion"),
        generation=integer(meta.get("generation"), "metadata.generation", 0, 2**63 - 1, default=0),
        finalizers=_strings(meta.get("finalizers"), "metadata.finalizers"),
        deleting=meta.get("deletionTimestamp") is not None,
    )


def _strings(value: Any, path: str) -> tuple[str, ...]:
    items = sequence(value, path)
    if not all(isinstance(i, str) for i in items):
        raise ParseError(f"{path}: must be strings")
    return tuple(items)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{type(value).__name__} {value!r:.40}"
