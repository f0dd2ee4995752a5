"""Kubernetes label selectors (matchLabels + matchExpressions), parsed once, matched often."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weir.controller.core.parsing import ParseError, mapping, sequence, string

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


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
