"""IP address management: which addresses each LoadBalancer Service gets (pure, deterministic).

Inputs are the typed Services (with their IP family policies) and LoadBalancerIPPools of the
cluster state, and the namespaces' labels; the output is one Allocation per Service Weir
handles (its addresses, or why it has none) and the usage of every pool. There is no store:
the addresses Services already hold (status.loadBalancer.ingress) are the allocation state,
so a restarted or newly elected controller computes the same answer and no address moves.

Rules, in the order they are applied (each phase takes Services oldest first):
1. Holders keep what they hold when it is still valid for them: the requested addresses if
   they ask for some, their family policy met, and no clash with an older holder. An address
   must also be in a pool that selects the Service, unless Weir gave it (the Service's
   weir.dev/IPAllocated condition records it, with its pool): then no pool edit or deletion
   takes it away. Such an address outside its pool's current spec is kept, and reported on
   that pool (`kept`) so the operator sees what the edit would have taken.
2. Services asking for addresses (weir.dev/load-balancer-ips, else the deprecated
   spec.loadBalancerIP) get exactly those, from any pool that selects them (autoAssign
   does not matter), or fail: NoPoolMatches, IPConflict.
3. The others get, per IP family they want, an address from the first pool (by name) that
   selects them and has autoAssign: with a sharing key, first an address already used by
   Services with the same key whose ports do not clash; else the lowest free address.
   Failures: NoPoolMatches (no such pool), PoolExhausted (all full).
A pool being deleted gives no new addresses; its holders keep theirs (`holders` says who, for
the finalizer that holds the deletion until none is left).
Two Services share an address only when both carry the same weir.dev/sharing-key and no
(port, protocol) of one is a (port, protocol) of the other (TCP 53 and UDP 53 may share).
avoidBuggyIPs leaves out IPv4 addresses ending in .0 and .255.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weir.controller.core.crds import IPPool
from weir.controller.core.objects import (
    ANN_LOAD_BALANCER_IPS,
    LOAD_BALANCER_CLASS,
    FamilyPolicy,
    Service,
)

Key = tuple[str, str]  # (namespace, name)
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

CONDITION = "weir.dev/IPAllocated"  # on Services: the allocation and the record of it
ALLOCATED = "IPAllocated"
NO_POOL = "NoPoolMatches"
EXHAUSTED = "PoolExhausted"
CONFLICT = "IPConflict"
INVALID = "InvalidRequest"

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Allocation:
    service: Key
    ips: tuple[str, ...]  # empty when the allocation failed
    reason: str  # ALLOCATED, or why not
    message: str
    pools: tuple[str, ...] = ()  # the pool of each address

    @property
    def ok(self) -> bool:
        return self.reason == ALLOCATED


@dataclass(frozen=True)
class PoolUsage:
    assigned_v4: int = 0
    assigned_v6: int = 0
    available_v4: int = 0  # capped at INT64_MAX
    available_v6: int = 0
    services: int = 0

    @property
    def assigned(self) -> int:
        return self.assigned_v4 + self.assigned_v6


@dataclass(frozen=True)
class IPAMResult:
    allocations: Mapping[Key, Allocation]  # every Service Weir allocates for
    pools: Mapping[str, PoolUsage]
    # Pool -> the Services ("namespace/name") holding its addresses, sorted.
    holders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Pool -> held addresses its spec no longer offers, kept: "IP (namespace/name): why".
    kept: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def handles(svc: Service, default_class: bool) -> bool:
    """Whether Weir allocates for this Service: type LoadBalancer with Weir's class, or with no
    class when Weir is the cluster's default implementation. (A classless Service with only
    the weir.dev/traffic-strategy annotation is served, but its address must come from the
    default implementation: two allocators must never write the same Service.)"""
    if svc.type != "LoadBalancer":
        return False
    if svc.load_balancer_class is None:
        return default_class
    return svc.load_balancer_class == LOAD_BALANCER_CLASS


def allocate(
    services: Iterable[Service],
    pools: Iterable[IPPool],
    *,
    default_class: bool = False,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    reserved: Mapping[str, str] | None = None,
) -> IPAMResult:
    """reserved: addresses held by Services this run does not allocate for (other classes,
    unreadable ones), address -> "namespace/name"; they are never handed out."""
    ns_labels = namespace_labels or {}
    ours = sorted((s for s in services if handles(s, default_class)), key=Service.age_key)
    table = _Claims([_Pool(p) for p in sorted(pools, key=lambda p: p.name)])
    for ip, holder in (reserved or {}).items():
        try:
            table.reserved[ipaddress.ip_address(ip)] = holder
        except ValueError:
            continue  # not an address: it holds nothing
    done: dict[Key, Allocation] = {}

    def selecting(svc: Service) -> list[_Pool]:
        labels = ns_labels.get(svc.namespace)
        return [p for p in table.pools if p.pool.selects(svc.namespace, svc.labels, labels)]

    def giving(svc: Service) -> list[_Pool]:
        return [p for p in selecting(svc) if not p.pool.deleting]

    for svc in ours:  # 1. holders
        alloc = _keep(svc, svc.families, selecting(svc), table)
        if alloc is not None:
            done[svc.key] = alloc
    for svc in ours:  # 2. requested addresses
        if svc.key not in done and (svc.requested_ips or _bad_request(svc)):
            done[svc.key] = _requested(svc, giving(svc), table)
    for svc in ours:  # 3. automatic
        if svc.key not in done:
            done[svc.key] = _automatic(svc, svc.families, giving(svc), table)
    holders: dict[str, set[str]] = {}
    for alloc in done.values():
        for name in alloc.pools:
            holders.setdefault(name, set()).add("/".join(alloc.service))
    return IPAMResult(
        done,
        table.usage(),
        {name: tuple(sorted(keys)) for name, keys in holders.items()},
        {name: tuple(notes) for name, notes in table.kept.items()},
    )


# --- the phases -----------------------------------------------------------------------------


def _keep(
    svc: Service, policy: FamilyPolicy, pools: list[_Pool], table: _Claims
) -> Allocation | None:
    if not svc.ingress_ips or _bad_request(svc):
        return None
    addrs = [ipaddress.ip_address(ip) for ip in svc.ingress_ips]
    if svc.requested_ips:
        if set(svc.ingress_ips) != set(svc.requested_ips):
            return None
    else:
        versions = [a.version for a in addrs]
        wanted = policy.wanted()
        if len(set(versions)) != len(versions) or not set(versions) <= set(wanted):
            return None
        if policy.policy == "RequireDualStack" and len(versions) < 2:
            return None
    given = granted(svc)
    owners: list[str] = []
    notes: list[str] = []
    for a in addrs:
        if table.clash(a, svc) is not None:
            return None
        owner = next((p for p in pools if p.offers(a)), None)
        if owner is not None:
            owners.append(owner.pool.name)
            notes.append("")
            continue
        recorded = given.get(str(a))
        if recorded is None:
            return None  # not an address Weir gave it: allocate anew
        name, why = table.outside(a, recorded, pools)
        owners.append(name)
        notes.append(why)
    for a, name, why in zip(addrs, owners, notes, strict=True):
        table.claim(a, svc)
        if why:
            table.note(name, f"{a} ({svc.namespace}/{svc.name}): {why}")
    return _ok(svc, addrs, owners, notes)


def _requested(svc: Service, pools: list[_Pool], table: _Claims) -> Allocation:
    if _bad_request(svc):
        return _fail(svc, INVALID, "; ".join(p for p in svc.problems if _is_request_problem(p)))
    return _exact(svc, [ipaddress.ip_address(ip) for ip in svc.requested_ips], pools, table)


def _exact(svc: Service, addrs: list[IPAddr], pools: list[_Pool], table: _Claims) -> Allocation:
    """These addresses or none: each must be in a pool selecting svc and free for it."""
    owners = []
    for a in addrs:
        owner = next((p for p in pools if p.offers(a)), None)
        if owner is None:
            others = [p.pool.name for p in table.pools if p.offers(a)]
            why = (
                f"{a} is in pool {', '.join(others)}, which does not select this Service"
                if others
                else f"{a} is in no LoadBalancerIPPool"
            )
            return _fail(svc, NO_POOL, why)
        holder = table.clash(a, svc)
        if holder is not None:
            return _fail(
                svc,
                CONFLICT,
                f"{a} is held by {holder}; a shared address needs the "
                "same weir.dev/sharing-key on both and no common port",
            )
        owners.append(owner)
    for a in addrs:
        table.claim(a, svc)
    return _ok(svc, addrs, [p.pool.name for p in owners])


def _automatic(
    svc: Service, policy: FamilyPolicy, pools: list[_Pool], table: _Claims
) -> Allocation:
    got: list[tuple[IPAddr, _Pool]] = []
    failures: list[tuple[str, str]] = []
    for version in policy.wanted():
        family = f"IPv{version}"
        candidates = [p for p in pools if p.pool.auto_assign and p.has_family(version)]
        if not candidates:
            failures.append(
                (
                    NO_POOL,
                    f"no LoadBalancerIPPool with autoAssign selects this Service for {family}",
                )
            )
            continue
        found = table.shared_address(svc, candidates, version) or table.free_address(
            candidates, version
        )
        if found is None:
            names = ", ".join(p.pool.name for p in candidates)
            failures.append((EXHAUSTED, f"no free {family} address in {names}"))
            continue
        got.append(found)
    required = 2 if policy.policy == "RequireDualStack" else 1
    if len(got) < required or (policy.policy == "SingleStack" and failures):
        reason, message = failures[0]
        return _fail(svc, reason, message)
    for a, _ in got:
        table.claim(a, svc)
    return _ok(svc, [a for a, _ in got], [p.pool.name for _, p in got])


def _ok(
    svc: Service, addrs: list[IPAddr], pools: list[str], notes: list[str] | None = None
) -> Allocation:
    """Success; the message is also the record granted() reads back: one "IP from pool NAME"
    clause per address, joined by ", ", each with " (kept: why)" when held outside its pool."""
    ips = tuple(str(a) for a in addrs)
    clauses = [
        f"{ip} from pool {n}" + (f" (kept: {note})" if note else "")
        for ip, n, note in zip(ips, pools, notes or [""] * len(ips), strict=True)
    ]
    return Allocation(svc.key, ips, ALLOCATED, ", ".join(clauses), tuple(pools))


def granted(svc: Service) -> dict[str, str]:
    """The addresses Weir gave svc, each with its pool, as its IPAllocated condition says."""
    cond = next((c for c in svc.conditions if c.get("type") == CONDITION), None)
    if cond is None or cond.get("status") != "True" or cond.get("reason") != ALLOCATED:
        return {}
    out: dict[str, str] = {}
    for clause in str(cond.get("message", "")).split(", "):
        words = clause.split()
        if len(words) >= 4 and words[1:3] == ["from", "pool"]:
            out[words[0]] = words[3]
    return out


def _fail(svc: Service, reason: str, message: str) -> Allocation:
    return Allocation(svc.key, (), reason, message)


def _is_request_problem(problem: str) -> bool:
    # objects.py names the field first in every problem it records.
    return problem.startswith((f"annotation {ANN_LOAD_BALANCER_IPS}", "spec.loadBalancerIP"))


def _bad_request(svc: Service) -> bool:
    """A requested address that did not parse: allocating the rest would be a surprise."""
    return any(_is_request_problem(p) for p in svc.problems)


# --- pools and claims -----------------------------------------------------------------------


def _buggy_upto(x: int) -> int:
    """How many integers in [0, x] end in .0 or .255 as IPv4 addresses."""
    return 0 if x < 0 else x // 256 + 1 + (x + 1) // 256


@dataclass
class _Pool:
    """A pool's addresses as merged [first, last] integer intervals per IP version."""

    pool: IPPool
    intervals: dict[int, list[list[int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for net in self.pool.cidrs:
            raw[net.version].append((int(net.network_address), int(net.broadcast_address)))
        for start, end in self.pool.ranges:
            raw[start.version].append((int(start), int(end)))
        for version, spans in raw.items():
            merged: list[list[int]] = []
            for lo, hi in sorted(spans):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            self.intervals[version] = merged

    def has_family(self, version: int) -> bool:
        return bool(self.intervals[version])

    def buggy(self, version: int, n: int) -> bool:
        return self.pool.avoid_buggy_ips and version == 4 and n % 256 in (0, 255)

    def offers(self, addr: IPAddr) -> bool:
        return not self.buggy(addr.version, int(addr)) and self.spans(addr)

    def spans(self, addr: IPAddr) -> bool:
        """addr is in the pool's cidrs or ranges (avoidBuggyIPs aside)."""
        n = int(addr)
        return any(lo <= n <= hi for lo, hi in self.intervals[addr.version])

    def size(self, version: int) -> int:
        total = 0
        for lo, hi in self.intervals[version]:
            total += hi - lo + 1
            if self.pool.avoid_buggy_ips and version == 4:
                total -= _buggy_upto(hi) - _buggy_upto(lo - 1)
        return total


class _Claims:
    """Who holds which address, during one allocate() run."""

    def __init__(self, pools: list[_Pool]) -> None:
        self.pools = pools
        self.holders: dict[IPAddr, list[Service]] = {}
        self.reserved: dict[IPAddr, str] = {}
        self.kept: dict[str, list[str]] = {}  # pool -> notes on addresses kept outside it
        # Claims only grow during a run, so each interval's lowest free address only moves up.
        self._cursor: dict[tuple[str, int, int], int] = {}

    def clash(self, addr: IPAddr, svc: Service) -> str | None:
        """The Service that keeps svc off addr, if any."""
        if addr in self.reserved:
            return self.reserved[addr]
        for other in self.holders.get(addr, ()):
            if not _can_share(svc, other):
                return f"{other.namespace}/{other.name}"
        return None

    def claim(self, addr: IPAddr, svc: Service) -> None:
        self.holders.setdefault(addr, []).append(svc)

    def outside(self, addr: IPAddr, recorded: str, selecting: list[_Pool]) -> tuple[str, str]:
        """(pool, why) for an address Weir gave from pool `recorded` that no pool selecting
        its Service offers now: the pool it is charged to, and what changed."""
        by_name = {p.pool.name: p for p in self.pools}
        pool = by_name.get(recorded) or next((p for p in self.pools if p.spans(addr)), None)
        if pool is None:
            return recorded, "its pool is gone"
        if not pool.spans(addr):
            return pool.pool.name, "not in the pool's cidrs or ranges"
        if pool.buggy(addr.version, int(addr)):
            return pool.pool.name, "left out by the pool's avoidBuggyIPs"
        if pool not in selecting:
            return pool.pool.name, "the pool's selectors no longer select the Service"
        return pool.pool.name, "the pool no longer offers it"

    def note(self, pool: str, note: str) -> None:
        if any(p.pool.name == pool for p in self.pools):
            self.kept.setdefault(pool, []).append(note)

    def shared_address(
        self, svc: Service, pools: list[_Pool], version: int
    ) -> tuple[IPAddr, _Pool] | None:
        if not svc.sharing_key:
            return None
        for addr in sorted(a for a in self.holders if a.version == version):
            if self.clash(addr, svc) is None:
                owner = next((p for p in pools if p.offers(addr)), None)
                if owner is not None:
                    return addr, owner
        return None

    def free_address(self, pools: list[_Pool], version: int) -> tuple[IPAddr, _Pool] | None:
        for p in pools:
            for i, (lo, hi) in enumerate(p.intervals[version]):
                cursor_key = (p.pool.name, version, i)
                n = max(lo, self._cursor.get(cursor_key, lo))
                while n <= hi:
                    addr = ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)
                    if not (p.buggy(version, n) or addr in self.holders or addr in self.reserved):
                        self._cursor[cursor_key] = n
                        return addr, p
                    n += 1
                self._cursor[cursor_key] = n
        return None

    def usage(self) -> dict[str, PoolUsage]:
        out = {}
        for p in self.pools:
            held = [a for a in {*self.holders, *self.reserved} if p.offers(a)]
            v4 = sum(1 for a in held if a.version == 4)
            v6 = len(held) - v4
            services = {s.key for a in held for s in self.holders.get(a, ())}
            out[p.pool.name] = PoolUsage(
                assigned_v4=v4,
                assigned_v6=v6,
                available_v4=min(INT64_MAX, p.size(4) - v4),
                available_v6=min(INT64_MAX, p.size(6) - v6),
                services=len(services),
            )
        return out


def _can_share(a: Service, b: Service) -> bool:
    if a.key == b.key:
        return True
    if not a.sharing_key or a.sharing_key != b.sharing_key:
        return False
    ports_a = {(p.port, p.protocol) for p in a.ports}
    return not ports_a & {(p.port, p.protocol) for p in b.ports}
