"""The controller's in-memory cluster state: what the sources fed it, parsed and typed.

ClusterState is the StateSink every source writes into (controller/sources/base.py). It parses
each object at the boundary, once (controller/core/objects.py), keeps an ObjectError for each
object it could not parse, and bumps `generation` only when something really changed: a relist
of identical objects, or an update that parses to the same object, leaves it alone.

Use it from one event loop thread (sources and readers alike).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.crds import (
    BGP_ADVERTISEMENT,
    BGP_PEER,
    IP_POOL,
    BGPAdvertisement,
    BGPPeer,
    IPPool,
)
from weir.controller.core.gcpause import gc_paused
from weir.controller.core.healthreport import ANN_HEALTH_REPORT
from weir.controller.core.objects import (
    ALL_KINDS,
    CLUSTER_SCOPED,
    ENDPOINT_SLICE,
    NAMESPACE,
    NODE,
    SECRET,
    SERVICE,
    EndpointSlice,
    KubeObject,
    Namespace,
    Node,
    ObjectRef,
    Secret,
    Service,
    object_ref,
    parse_object,
)
from weir.controller.core.parsing import ParseError

log = get_logger("weir.controller.state")

Key = tuple[str, str]  # (namespace, name)

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ClusterInputs:
    """An immutable view of the parsed cluster objects, what reduce() works from.

    Namespaced kinds are keyed by (namespace, name), cluster-scoped ones by name. Mapping order
    carries no meaning: reduce sorts what it needs.
    """

    services: Mapping[Key, Service] = field(default_factory=lambda: _EMPTY)
    endpoint_slices: Mapping[Key, EndpointSlice] = field(default_factory=lambda: _EMPTY)
    nodes: Mapping[str, Node] = field(default_factory=lambda: _EMPTY)
    secrets: Mapping[Key, Secret] = field(default_factory=lambda: _EMPTY)
    pools: Mapping[str, IPPool] = field(default_factory=lambda: _EMPTY)
    bgp_peers: Mapping[str, BGPPeer] = field(default_factory=lambda: _EMPTY)
    bgp_advertisements: Mapping[str, BGPAdvertisement] = field(default_factory=lambda: _EMPTY)
    namespaces: Mapping[str, Namespace] = field(default_factory=lambda: _EMPTY)  # IPAM only
    drained: frozenset[str] = frozenset()  # nodes drained in memory (weirctl, file source)
    # Frontend id -> "namespace/name" of the Service the last published version gave it to
    # (set by the publisher): a holder keeps it against newcomers (core/claims.py).
    held: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # Frontend id -> the (address, port) of its backends that a majority of the LB nodes
    # checking them see failing (controller/plane/health.py decides; reduce holds them out).
    failing: Mapping[str, frozenset[tuple[str, int]]] = field(default_factory=lambda: _EMPTY)


class _Rejected(NamedTuple):
    """An object that did not parse: its error, and the object as read."""

    error: pb.ObjectError
    raw: Mapping[str, Any]


class ClusterState:
    """Implements StateSink; see the module docstring.

    kinds: the kinds it keeps (others are ignored); ALL_KINDS is what reduce reads.
    """

    def __init__(self, kinds: frozenset[str] = ALL_KINDS) -> None:
        self.kinds = kinds
        self._objects: dict[str, dict[Key, KubeObject]] = {k: {} for k in kinds}
        self._rejected: dict[ObjectRef, _Rejected] = {}
        self._source_errors: dict[str, dict[tuple[str, str, str, str], pb.ObjectError]] = {}
        self._listed: set[str] = set()  # kinds that had their first full list
        self._changes = Generation()
        self._subscriptions: list[tuple[frozenset[str], Generation]] = []
        self._inputs: ClusterInputs | None = None
        self._drained: set[str] = set()
        self._failing: Mapping[str, frozenset[tuple[str, int]]] = _EMPTY
        # Node -> its weir.dev/health-report annotation, outside the inputs: its renewals
        # must not make reduce run (controller/core/healthreport.py reads them).
        self._health_reports: dict[str, str] = {}
        # Called on every change of Nodes or of their reports, at the end of the change
        # itself: before anything else sees it.
        self.node_listeners: list[Callable[[], None]] = []
        self._nodes_changed = False
        self._unfollowed: set[str] = set()  # kinds the source lost (the API out of reach)

    # -- reading ------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumps on every change of objects or errors (and on each kind's first full list)."""
        return self._changes.value

    @property
    def listed_kinds(self) -> frozenset[str]:
        """Kinds whose first full list (replace) arrived: the state is complete for them."""
        return frozenset(self._listed)

    async def wait_changed(self, after_generation: int) -> int:
        """Wait until generation > after_generation; returns the new generation."""
        return await self._changes.wait_past(after_generation)

    def changes_of(self, kinds: frozenset[str]) -> Generation:
        """A Generation of its own that bumps only when objects of these kinds change (their
        first full list, an object, or its parse error), for readers of a few kinds."""
        changes = Generation()
        self._subscriptions.append((kinds, changes))
        return changes

    def inputs(self) -> ClusterInputs:
        if self._inputs is None:
            self._inputs = _inputs_from(self._objects, frozenset(self._drained), self._failing)
        return self._inputs

    def unparsed(self, kind: str) -> list[Mapping[str, Any]]:
        """The objects of this kind that did not parse, as read (each has an ObjectError)."""
        return [raw for raw, _ in self.rejected(kind)]

    def rejected(self, kind: str) -> list[tuple[Mapping[str, Any], pb.ObjectError]]:
        """The objects of this kind that did not parse, as read, each with its error."""
        return [(r.raw, r.error) for ref, r in self._rejected.items() if ref.kind == kind]

    def follows(self, kind: str) -> bool:
        """The source follows this kind now (see following)."""
        return kind not in self._unfollowed

    def health_reports(self) -> Mapping[str, str]:
        """Node -> the text of its weir.dev/health-report annotation (Nodes that have one)."""
        return MappingProxyType(dict(self._health_reports))

    def set_drained(self, node: str, drain: bool) -> None:
        """Drain (or undrain) a node in memory, next to its weir.dev/drain annotation: what
        `weirctl node drain` does with the file source. Forgotten on restart."""
        if (node in self._drained) != drain:
            if drain:
                self._drained.add(node)
            else:
                self._drained.discard(node)
            self._bump({NODE})
            self._notify_nodes()

    def set_failing(self, failing: Mapping[str, frozenset[tuple[str, int]]]) -> None:
        """The backends the health checks find failing, by frontend id (ClusterInputs.failing):
        a change makes a version like any endpoint change."""
        if failing != self._failing:
            self._failing = MappingProxyType(dict(failing))
            self._bump()

    def errors(self) -> list[pb.ObjectError]:
        """Parse errors and source errors, sorted by (kind, namespace, name, message)."""
        errs = [r.error for r in self._rejected.values()]
        for by_origin in self._source_errors.values():
            errs.extend(by_origin.values())
        errs.sort(key=lambda e: (e.kind, e.namespace, e.name, e.message))
        return errs

    # -- StateSink ----------------------------------------------------------------------------

    def replace(
        self, kinds: frozenset[str], objects: Iterable[Mapping[str, Any]], origin: str = ""
    ) -> None:
        with gc_paused():
            kinds = frozenset(kinds) & self.kinds
            if NODE in kinds:
                objects = list(objects)
                nodes = [r for r in objects if object_ref(r).kind == NODE]
                self._note_reports({object_ref(r).name: _health_report(r) for r in nodes}, True)
            self._replace(kinds, objects)
        self._notify_nodes()

    def _replace(self, kinds: frozenset[str], objects: Iterable[Mapping[str, Any]]) -> None:
        fresh: dict[str, dict[Key, KubeObject]] = {k: {} for k in kinds}
        fresh_rejected: dict[ObjectRef, _Rejected] = {}
        for raw in objects:
            ref = object_ref(raw)
            if ref.kind not in kinds:
                continue  # kinds Weir does not read, or not part of this list
            parsed = self._parse(ref, raw)
            if isinstance(parsed, _Rejected):
                fresh_rejected[ref] = parsed
                fresh[ref.kind].pop(_ref_key(ref), None)
            else:
                fresh[ref.kind][_ref_key(ref)] = parsed
                fresh_rejected.pop(ref, None)

        changed = set(kinds - self._listed)
        self._listed |= kinds
        for kind in kinds:
            old, new = self._objects[kind], fresh[kind]
            # Keep the old instance of an unchanged object: equal inputs stay identical.
            for key, obj in new.items():
                prev = old.get(key)
                if prev is not None and prev == obj:
                    new[key] = prev
                else:
                    changed.add(kind)
            if old.keys() != new.keys():
                changed.add(kind)
            self._objects[kind] = new
        rejected = {r: e for r, e in self._rejected.items() if r.kind not in kinds}
        rejected.update(fresh_rejected)
        if rejected != self._rejected:
            self._log_new_errors(rejected)
            changed |= {
                ref.kind
                for ref in rejected.keys() | self._rejected.keys()
                if rejected.get(ref) != self._rejected.get(ref)
            }
            self._rejected = rejected
        if changed:
            self._bump(changed)

    def upsert(self, obj: Mapping[str, Any]) -> None:
        ref = object_ref(obj)
        if ref.kind not in self.kinds:
            return
        if ref.kind == NODE:
            self._note_reports({ref.name: _health_report(obj)})
        parsed = self._parse(ref, obj)
        objects = self._objects[ref.kind]
        key = _ref_key(ref)
        changed = False
        if isinstance(parsed, _Rejected):
            changed = objects.pop(key, None) is not None
            if self._rejected.get(ref) != parsed:
                self._log_new_errors({ref: parsed})
                self._rejected[ref] = parsed
                changed = True
        else:
            if self._rejected.pop(ref, None) is not None:
                changed = True
            if objects.get(key) != parsed:
                objects[key] = parsed
                changed = True
        if changed:
            self._bump({ref.kind})
        self._notify_nodes()

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind not in self.kinds:
            return
        ref = ObjectRef(kind, "" if kind in CLUSTER_SCOPED else namespace, name)
        if kind == NODE:
            self._note_reports({name: None})
        removed = self._objects[kind].pop(_ref_key(ref), None) is not None
        removed |= self._rejected.pop(ref, None) is not None
        if removed:
            self._bump({kind})
        self._notify_nodes()

    def following(self, kind: str, live: bool) -> None:
        """The source follows this kind again (live) or lost it; the objects stay as they
        were. Only the health reports' ages care (they stop while Nodes are not followed:
        controller/plane/health.py), so only Nodes' listeners hear of it."""
        if live == self.follows(kind):
            return
        if live:
            self._unfollowed.discard(kind)
        else:
            self._unfollowed.add(kind)
        if kind == NODE:
            self._nodes_changed = True
            self._notify_nodes()

    def report_error(self, err: pb.ObjectError, origin: str = "") -> None:
        by_origin = self._source_errors.setdefault(origin, {})
        key = (err.kind, err.namespace, err.name, err.message)
        if key not in by_origin:
            log.warning(
                "source error",
                kind=err.kind,
                namespace=err.namespace,
                name=err.name,
                error=err.message,
                origin=origin,
            )
            by_origin[key] = err
            self._bump()

    def clear_errors(self, origin: str) -> None:
        if self._source_errors.pop(origin, None):
            self._bump()

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _parse(ref: ObjectRef, raw: Mapping[str, Any]) -> KubeObject | _Rejected:
        try:
            return parse_object(raw)
        except ParseError as e:
            error = pb.ObjectError(
                kind=ref.kind, namespace=ref.namespace, name=ref.name, message=str(e)
            )
            return _Rejected(error, raw)

    def _log_new_errors(self, rejected: Mapping[ObjectRef, _Rejected]) -> None:
        for ref, r in rejected.items():
            old = self._rejected.get(ref)
            if old is None or old.error != r.error:
                log.warning(
                    "bad object skipped",
                    kind=ref.kind,
                    namespace=ref.namespace,
                    name=ref.name,
                    error=r.error.message,
                )

    def _note_reports(self, reports: Mapping[str, str | None], whole: bool = False) -> None:
        """Node -> its report's text (None: none); whole: these are all the Nodes."""
        new = {} if whole else dict(self._health_reports)
        for node, text in reports.items():
            if text is None:
                new.pop(node, None)
            else:
                new[node] = text
        if new != self._health_reports:
            self._health_reports = new
            self._nodes_changed = True

    def _notify_nodes(self) -> None:
        if self._nodes_changed:
            self._nodes_changed = False
            for listener in list(self.node_listeners):
                listener()

    def _bump(self, kinds: Iterable[str] = ()) -> None:
        self._inputs = None
        self._nodes_changed |= NODE in kinds
        self._changes.bump()
        for watched, changes in self._subscriptions:
            if not watched.isdisjoint(kinds):
                changes.bump()


def _health_report(raw: Any) -> str | None:
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    text = annotations.get(ANN_HEALTH_REPORT) if isinstance(annotations, Mapping) else None
    return text if isinstance(text, str) else None


def _ref_key(ref: ObjectRef) -> Key:
    return (ref.namespace, ref.name)


def _inputs_from(
    by_kind: Mapping[str, Mapping[Key, KubeObject]],
    drained: frozenset[str],
    failing: Mapping[str, frozenset[tuple[str, int]]],
) -> ClusterInputs:
    def namespaced(kind: str) -> Mapping[Key, Any]:
        return MappingProxyType(dict(by_kind.get(kind, _EMPTY)))

    def cluster_scoped(kind: str) -> Mapping[str, Any]:
        return MappingProxyType({name: obj for (_, name), obj in by_kind.get(kind, _EMPTY).items()})

    return ClusterInputs(
        services=namespaced(SERVICE),
        endpoint_slices=namespaced(ENDPOINT_SLICE),
        nodes=cluster_scoped(NODE),
        secrets=namespaced(SECRET),
        pools=cluster_scoped(IP_POOL),
        bgp_peers=cluster_scoped(BGP_PEER),
        bgp_advertisements=cluster_scoped(BGP_ADVERTISEMENT),
        namespaces=cluster_scoped(NAMESPACE),
        drained=drained,
        failing=failing,
    )
