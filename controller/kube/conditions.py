"""Status conditions (metav1.Condition) as the leader writes them, on Services and pools."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

MAX_MESSAGE = 32768  # what the API server accepts in a condition's message


def now() -> str:
    """metav1.Time of now: RFC 3339, whole seconds, UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    ctype: str,
    status: str,
    reason: str,
    message: str,
    previous: Mapping[str, Any] | None,
    generation: int = 0,
) -> dict[str, Any]:
    """A condition; lastTransitionTime is the previous one's while the status is the same.
    generation: the metadata.generation it was computed from (0: the kind keeps none)."""
    since = None
    if previous is not None and previous.get("status") == status:
        since = previous.get("lastTransitionTime")
    cond: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": since or now(),
    }
    if generation:
        cond["observedGeneration"] = generation
    return cond


def find(conditions: Any, ctype: str) -> Mapping[str, Any] | None:
    """The condition of this type in a conditions list as read (anything), if any."""
    if not isinstance(conditions, list | tuple):
        return None
    return next((c for c in conditions if isinstance(c, Mapping) and c.get("type") == ctype), None)


def replaced(conditions: Iterable[Mapping[str, Any]], cond: Mapping[str, Any]) -> list[Any]:
    """The conditions with cond instead of the one of its type (the others as read)."""
    return [*(c for c in conditions if c.get("type") != cond["type"]), cond]


def without(conditions: Iterable[Mapping[str, Any]], ctype: str) -> list[Any] | None:
    """The conditions but the one of this type; None (remove the list) when none is left."""
    return [c for c in conditions if c.get("type") != ctype] or None
