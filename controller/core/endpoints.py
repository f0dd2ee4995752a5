"""Which endpoints of a Service port become backends (KEP-1669, as kube-proxy does it).

Ready and not terminating endpoints serve. Only when a port has none of those, endpoints that
are serving but terminating take over, so a rolling update or a scale-down to zero does not
drop traffic that could still be served. Endpoints that are terminating and not serving never
serve. The choice is made over all the Service's slices of one address family together.
"""

from __future__ import annotations

from collections.abc import Sequence

from weir.controller.core.objects import Endpoint, EndpointSlice

Chosen = list[tuple[Endpoint, int]]  # (endpoint, target port)


def select_backends(slices: Sequence[EndpointSlice], port_name: str, protocol: str) -> Chosen:
    """The endpoints for one Service port, sorted by (address, port), one per (address, port).

    slices: the Service's slices of the VIP's address family, sorted by name (the first slice
    wins when two list the same address and port, as happens while slices are rebalanced).
    """
    groups: list[tuple[int, EndpointSlice]] = []
    for s in slices:
        for p in s.ports:
            if p.name == port_name and p.protocol == protocol:
                groups.append((p.port, s))
                break
    chosen = [(e, port) for port, s in groups for e in s.usable]
    if not chosen:
        chosen = [(e, port) for port, s in groups for e in s.fallback]
    if len(groups) > 1:
        unique: dict[tuple[bytes, int], tuple[Endpoint, int]] = {}
        for e, port in chosen:
            unique.setdefault((e.sort_key, port), (e, port))
        chosen = [unique[k] for k in sorted(unique)]
    return chosen
