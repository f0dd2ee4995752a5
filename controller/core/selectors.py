"""Kubernetes label selectors, parsed once, matched often: the object form (matchLabels +
matchExpressions) of Weir's resources, and the string form of flags (`a=b,c!=d,e in (x,y),!f`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weir.controller.core.parsing import ParseError, mapping, sequence, string

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Label keys and values as Kubernetes validates them: a key is an optional DNS-subdomain
# prefix and "/" then a name of at most 63 characters; a value is empty or a name.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_KEY = rf"(?:{_PREFIX}/)?{_NAME}"
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        !\s*(?P<absent>{_KEY})
      | (?P<key>{_KEY})\s*(?:
            (?P<op>==|=|!=)\s*(?P<value>{_NAME})?
          | \s(?P<set_op>in|notin)\s*\((?P<values>[^()]*)\)
        )?
    )\s*""",
    re.VERBOSE,
)
_VALUE = re.compile(_NAME)


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        # NotIn also matches objects without the key, as in Kubernetes.
        return labels.get(self.key) not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """All requirements must hold; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


MATCH_ALL = LabelSelector()


def parse_selector(raw: Any, path: str) -> LabelSelector:
    """Parse {matchLabels: {...}, matchExpressions: [{key, operator, values}]}."""
    sel = mapping(raw, path)
    unknown = set(sel) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ParseError(f"{path}: unknown fields {sorted(unknown)}")
    reqs: list[Requirement] = []
    for key, value in mapping(sel.get("matchLabels"), f"{path}.matchLabels").items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ParseError(f"{path}.matchLabels: keys and values must be strings")
        reqs.append(Requirement(key, "In", frozenset((value,))))
    for i, expr in enumerate(sequence(sel.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        expr = mapping(expr, p)
        key = string(expr.get("key"), f"{p}.key", required=True)
        op = string(expr.get("operator"), f"{p}.operator", required=True)
        if op not in _OPERATORS:
            raise ParseError(f"{p}.operator: {op!r} is not one of {', '.join(_OPERATORS)}")
        values = sequence(expr.get("values"), f"{p}.values")
        if not all(isinstance(v, str) for v in values):
            raise ParseError(f"{p}.values: must be strings")
        if op in ("In", "NotIn") and not values:
            raise ParseError(f"{p}.values: {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise ParseError(f"{p}.values: {op} takes no values")
        reqs.append(Requirement(key, op, frozenset(values)))
    return LabelSelector(tuple(reqs))


def parse_selectors(raw: Any, path: str) -> tuple[LabelSelector, ...]:
    """A list of selectors (an object matches when any one of them matches)."""
    return tuple(parse_selector(s, f"{path}[{i}]") for i, s in enumerate(sequence(raw, path)))


def parse_selector_string(text: str) -> LabelSelector:
    """The string form kubectl -l takes: comma-separated `key=value`, `key==value`,
    `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key` and `!key`. The empty string
    matches everything. ParseError names the requirement that is wrong."""
    reqs: list[Requirement] = []
    for part in _split_requirements(text):
        m = _REQUIREMENT.fullmatch(part)
        if m is None or len((m["absent"] or m["key"]).rpartition("/")[0]) > 253:
            raise ParseError(f"{part.strip()!r} is not a label requirement")
        if m["absent"]:
            reqs.append(Requirement(m["absent"], "DoesNotExist", frozenset()))
        elif m["set_op"]:
            values = [v.strip() for v in m["values"].split(",")]
            if not all(_VALUE.fullmatch(v) for v in values):
                raise ParseError(f"{part.strip()!r}: {m['set_op']} needs label values")
            op = "In" if m["set_op"] == "in" else "NotIn"
            reqs.append(Requirement(m["key"], op, frozenset(values)))
        elif m["op"]:
            op = "NotIn" if m["op"] == "!=" else "In"
            reqs.append(Requirement(m["key"], op, frozenset((m["value"] or "",))))
        else:
            reqs.append(Requirement(m["key"], "Exists", frozenset()))
    return LabelSelector(tuple(reqs))


def _split_requirements(text: str) -> list[str]:
    """Split at the commas that are not inside a value list's parentheses."""
    if not text.strip():
        return []
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts
