"""How load-balancer nodes reach each backend of a frontend (docs/FORWARDING.md).

The Service annotation weir.dev/forwarding chooses, for all of the Service's backends:
- auto: encapsulation to the endpoint's node when its nodeName names a Node Weir knows with an
  IPv4 InternalIP (a pod, anywhere), else L2 DSR (a host on the LB nodes' segment);
- encap: encapsulation for all; endpoints without a known node address are left out;
- l2: L2 DSR for all; endpoints listening on another port than the frontend's are left out,
  since L2 DSR delivers the client's packet unchanged and cannot translate ports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from weir.common.pb import pb
from weir.controller.core.endpoints import Chosen
from weir.controller.core.objects import Endpoint

L2_DSR = pb.FORWARDING_L2_DSR
ENCAP = pb.FORWARDING_ENCAP
_EXAMPLES = 3  # endpoints named in a message; the rest are counted


# A backend and how it is reached: (endpoint, its port (the Service's targetPort),
# pb.Forwarding, the address of its node for ENCAP or ""). A plain tuple: there is one per
# backend of the cluster.
Placed = tuple[Endpoint, int, int, str]


def place(
    chosen: Chosen, mode: str, port: int, addresses: Mapping[str, str]
) -> tuple[list[Placed], str]:
    """The backends of one frontend with their forwarding, in the order of chosen; and why
    some endpoints were left out ("" when none were).

    mode: the Service's weir.dev/forwarding; port: the frontend's port; addresses: the node
    address of every Node that has one, by name.
    """
    get = addresses.get  # no Node is named "": endpoints without nodeName find nothing
    if mode == "auto":  # the common case, in one comprehension
        return [
            (e, target, ENCAP, a) if (a := get(e.node)) else (e, target, L2_DSR, "")
            for e, target in chosen
        ], ""
    placed: list[Placed] = []
    if mode == "l2":
        other_port: list[str] = []
        for e, target in chosen:
            if target == port:
                placed.append((e, target, L2_DSR, ""))
            else:
                other_port.append(_address(e, target))
        if not other_port:
            return placed, ""
        return placed, (
            "weir.dev/forwarding is l2, which cannot translate ports; endpoints left out, "
            f"listening on another port than {port}: {_listed(other_port)}"
        )
    no_node: list[str] = []
    for e, target in chosen:
        node_address = get(e.node)
        if node_address:
            placed.append((e, target, ENCAP, node_address))
        else:
            no_node.append(f"{e.address} (node {e.node!r})" if e.node else f"{e.address} (no node)")
    if not no_node:
        return placed, ""
    return placed, (
        "weir.dev/forwarding is encap; endpoints left out, on no Node with an IPv4 "
        f"InternalIP: {_listed(no_node)}"
    )


def _address(e: Endpoint, port: int) -> str:
    return f"[{e.address}]:{port}" if ":" in e.address else f"{e.address}:{port}"


def _listed(items: Sequence[str]) -> str:
    """'a, b, c and 4 more'."""
    more = f" and {len(items) - _EXAMPLES} more" if len(items) > _EXAMPLES else ""
    return ", ".join(items[:_EXAMPLES]) + more
