"""The seam between where cluster objects come from (files, the Kubernetes API) and the state.

A Source feeds Kubernetes JSON-shaped mappings (`apiVersion`, `kind`, `metadata`, `spec`,
`status`) into a StateSink. core.state.ClusterState is the sink; it parses each object at
the boundary, so sources pass objects through as read and never validate them.

All sink methods must be called on the event loop thread that awaits the state's changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from weir.common.pb import pb


class StateSink(Protocol):
    def replace(
        self, kinds: frozenset[str], objects: Iterable[Mapping[str, Any]], origin: str = ""
    ) -> None:
        """The full list of these kinds (an initial list or a relist); others of them go."""
        ...

    def upsert(self, obj: Mapping[str, Any]) -> None:
        """One object added or modified (watch ADDED / MODIFIED)."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """One object removed (watch DELETED). Cluster-scoped objects have namespace ""."""
        ...

    def report_error(self, err: pb.ObjectError, origin: str = "") -> None:
        """An error that belongs to the source, not to one parsed object (an unparsable file).

        It stays until clear_errors(origin) is called with the same origin.
        """
        ...

    def clear_errors(self, origin: str) -> None:
        """Forget the errors reported with this origin."""
        ...

    def following(self, kind: str, live: bool) -> None:
        """Whether the source follows this kind now: False from a failure to read it (the
        API out of reach) until it lists or watches it again. The objects stay as they were."""
        ...


class Source(Protocol):
    async def run(self, sink: StateSink) -> None:
        """Feed the sink until cancelled."""
        ...
