"""Which Service gets a frontend (VIP, port, protocol) that several Services claim.

Two rules, the same whether the VIPs come from IPAM or from the file source's annotations:

- A VIP is shared only by Services that all carry the same weir.dev/sharing-key, as IPAM gives
  one address to several Services only then (controller/kube/ipam.py). A Service without
  the first claimant's key loses every frontend on that VIP.
- A frontend, and the VIP it is on, stay with the Service that had them in the last published
  version: a newcomer never takes over, whatever its creationTimestamp says (a manifest file
  can say anything). Among newcomers the oldest wins (Service.age_key: creationTimestamp, then
  namespace/name).

`held` (frontend id -> "namespace/name") is what the last published version gave to whom
(ClusterInputs.held); it is empty on a fresh start, when only age decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from weir.controller.core.objects import Service


class Claim(Protocol):
    @property
    def service(self) -> Service: ...

    @property
    def vip(self) -> str: ...


C = TypeVar("C", bound=Claim)


def settle(
    claims: Mapping[str, Sequence[C]], held: Mapping[str, str]
) -> tuple[dict[str, C], list[tuple[Service, str]]]:
    """-> (the winning claim of each frontend that has one, (Service, why) for each loss)."""
    lost: list[tuple[Service, str]] = []
    shut_out = _vip_sharing(claims, held, lost)
    won: dict[str, C] = {}
    for fid in sorted(claims):
        contenders = [c for c in claims[fid] if (c.vip, c.service.key) not in shut_out]
        if len(contenders) < 2:
            won.update((fid, c) for c in contenders)
            continue
        holder = held.get(fid)
        winner = min(contenders, key=lambda c: (_name(c.service) != holder, c.service.age_key()))
        won[fid] = winner
        why = "which holds it" if _name(winner.service) == holder else "which is older"
        for c in contenders:
            if c is not winner:
                lost.append(
                    (
                        c.service,
                        f"frontend {fid} is also claimed by {_name(winner.service)}, {why}; "
                        "it is left out for this Service",
                    )
                )
    return won, lost


def _vip_sharing(
    claims: Mapping[str, Sequence[Claim]],
    held: Mapping[str, str],
    lost: list[tuple[Service, str]],
) -> set[tuple[str, tuple[str, str]]]:
    """The (VIP, Service key) pairs shut out of a VIP whose first claimant's key they lack."""
    by_vip: dict[str, dict[tuple[str, str], Service]] = {}
    holders: dict[str, set[str]] = {}
    for fid, contenders in claims.items():
        for c in contenders:
            by_vip.setdefault(c.vip, {})[c.service.key] = c.service
            holder = held.get(fid)
            if holder is not None and holder == _name(c.service):
                holders.setdefault(c.vip, set()).add(holder)
    out: set[tuple[str, tuple[str, str]]] = set()
    for vip in sorted(by_vip):
        services = by_vip[vip]
        if len(services) < 2:
            continue
        held_by = holders.get(vip, set())
        first = min(services.values(), key=lambda s: (_name(s) not in held_by, s.age_key()))
        for svc in services.values():
            if svc is first or (first.sharing_key and svc.sharing_key == first.sharing_key):
                continue
            out.add((vip, svc.key))
            lost.append(
                (
                    svc,
                    f"VIP {vip} is used by {_name(first)}; Services share a VIP only when all "
                    "carry the same weir.dev/sharing-key; its frontends on it are left out",
                )
            )
    return out


def _name(svc: Service) -> str:
    return f"{svc.namespace}/{svc.name}"
