"""The fake kube-apiserver's store: typed objects, one resourceVersion sequence, the event
history, and the write semantics of the real server (see tests/kube/fakeapi.py).

Every operation is synchronous: the event loop makes each one atomic, as etcd's transactions
do for the real server.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from weir.common.aio import Generation

from .fakeapi_patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .fakeapi_schema import apply_defaults, prune_resource, validate
from .fakeapi_types import (
    DEFAULT_VERSION,
    FakeAllocators,
    Obj,
    ResourceType,
    builtin_types,
    crd_types,
)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD = "CustomResourceDefinition"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"  # the real server's finalizer

Event = tuple[int, tuple[str, str], str, Obj]  # (resourceVersion, type key, type, object)
Listener = Callable[[ResourceType, str, Obj], None]  # (type, event type, object)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def invalid(kind: str, name: str, errs: list[str]) -> ApiError:
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {"; ".join(errs)}')


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Objects by type, the resourceVersion of the last write (rv), and the retained history
    of events; watches before `compacted` are gone. Listeners hear every event.

    version: the Kubernetes (major, minor) it simulates, where that changes what it serves.

    Deleting a CustomResourceDefinition deletes its resources first, as the real server's
    finalizer does (DELETED events, or a deletionTimestamp on those with finalizers); the CRD
    stays, terminating, until the last is gone, and its resources cannot be created then.
    """

    def __init__(
        self,
        activity: Generation,
        *,
        history_limit: int = 1000,
        version: tuple[int, int] = DEFAULT_VERSION,
    ) -> None:
        self.history_limit = history_limit
        self.version = version
        self.types: dict[tuple[str, str, str], ResourceType] = {}  # group, version, plural
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.rv = 0
        self.history: deque[Event] = deque()
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self._activity = activity
        self._listeners: list[Listener] = []
        self._alloc = FakeAllocators()
        self._crd_of: dict[tuple[str, str], str] = {}  # custom type key -> its CRD's name
        for t in builtin_types(version):
            self.register(t)
        namespaces = self.type_for("v1", "Namespace")
        for ns in DEFAULT_NAMESPACES:
            self.create(namespaces, "", {"metadata": {"name": ns}})

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def compact(self) -> None:
        """Forget the event history: watches from any older resourceVersion now get 410."""
        self.history.clear()
        self.compacted = self.rv

    def objects_in(self, rtype: ResourceType, namespace: str) -> list[Obj]:
        """The stored objects of a type in a namespace ("" = all), by (namespace, name)."""
        return [
            o for (ns, _), o in sorted(self.objects[rtype.key].items()) if namespace in ("", ns)
        ]

    # --- types ----------------------------------------------------------------------------

    def register(self, t: ResourceType) -> None:
        self.types[(t.group, t.version, t.plural)] = t
        self.objects.setdefault(t.key, {})

    def type_for(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for t in self.types.values():
            if t.group == group and t.version == version and t.kind == kind:
                return t
        raise ApiError(404, "NotFound", f"no kind {kind!r} is registered for {api_version!r}")

    def type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        return self.type_for(obj.get("apiVersion", ""), obj.get("kind", ""))

    # --- operations -----------------------------------------------------------------------

    def _commit(self, rtype: ResourceType, etype: str, obj: Obj) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        store = self.objects[rtype.key]
        key = (meta.get("namespace", ""), meta["name"])
        if etype == "DELETED":
            store.pop(key, None)
        else:
            store[key] = obj
        event_obj = copy.deepcopy(obj)
        self.history.append((self.rv, rtype.key, etype, event_obj))
        while len(self.history) > self.history_limit:
            self.compacted = self.history.popleft()[0]
        for listener in self._listeners:
            listener(rtype, etype, event_obj)
        self._activity.bump()
        if etype == "ADDED" and rtype.kind == CRD:
            for t in crd_types(obj):
                self.register(t)
                self._crd_of[t.key] = meta["name"]
        if etype == "DELETED" and rtype.kind == CRD:
            for t in crd_types(obj):
                self.types.pop((t.group, t.version, t.plural), None)
                self.objects.pop(t.key, None)
                self._crd_of.pop(t.key, None)
        if etype == "DELETED" and rtype.key in self._crd_of:
            self._finish_crd_deletion(self._crd_of[rtype.key])
        return copy.deepcopy(obj)

    def _crd(self, name: str) -> tuple[ResourceType, Obj] | None:
        crds = self.type_for("apiextensions.k8s.io/v1", CRD)
        obj = self.objects[crds.key].get(("", name))
        return None if obj is None else (crds, obj)

    def _terminating(self, rtype: ResourceType) -> bool:
        name = self._crd_of.get(rtype.key)
        found = self._crd(name) if name else None
        return found is not None and bool(found[1]["metadata"].get("deletionTimestamp"))

    def _finish_crd_deletion(self, name: str) -> None:
        """Remove a terminating CRD once none of its resources is left."""
        found = self._crd(name)
        if found is None or not found[1]["metadata"].get("deletionTimestamp"):
            return
        keys = [key for key, crd in self._crd_of.items() if crd == name]
        if any(self.objects.get(key) for key in keys):
            return
        crds, obj = found
        obj = copy.deepcopy(obj)
        obj["metadata"]["finalizers"] = []
        self._commit(crds, "DELETED", obj)

    def _check_body(self, rtype: ResourceType, body: Any, namespace: str) -> Obj:
        if not isinstance(body, Mapping):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        for field_name, want in (("apiVersion", rtype.api_version), ("kind", rtype.kind)):
            got = obj.setdefault(field_name, want)
            if got != want:
                raise ApiError(400, "BadRequest", f"{field_name} {got!r} does not match {want!r}")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if rtype.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace on the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _validate(self, rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
        name = obj["metadata"].get("name", "")
        if rtype.normalize:
            rtype.normalize(obj)
        if rtype.schema is not None:
            pruned = prune_resource(obj, rtype.schema)
            obj.clear()
            obj.update(apply_defaults(pruned, rtype.schema))
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            errs = validate(body, rtype.schema)
            if errs:
                raise invalid(rtype.kind, name, errs)
        errs = _annotation_errors(obj["metadata"].get("annotations"))
        if old is not None and rtype.validate_update:
            errs += rtype.validate_update(old, obj)  # also carries immutable fields over
        if old is not None and rtype.default:
            rtype.default(obj, self._alloc)  # the server defaults on update too
        if rtype.validate:
            errs += rtype.validate(obj)
        if rtype.validate_status:
            errs += rtype.validate_status(obj)
        if errs:
            raise invalid(rtype.kind, name, errs)

    def create(self, rtype: ResourceType, namespace: str, body: Any) -> Obj:
        obj = self._check_body(rtype, body, namespace)
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(rtype.kind, "", ["metadata.name: Required value"])
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rtype.namespaced and ("", namespace) not in self.objects[("", "namespaces")]:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        if self._terminating(rtype):
            raise ApiError(
                405,
                "MethodNotAllowed",
                "create not allowed while custom resource definition is terminating",
            )
        key = (namespace if rtype.namespaced else "", meta["name"])
        if key in self.objects[rtype.key]:
            raise ApiError(409, "AlreadyExists", f'{rtype.plural} "{meta["name"]}" already exists')
        for f in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(f, None)
        meta.pop("generation", None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if rtype.tracks_generation:
            meta["generation"] = 1
        if rtype.clear_status_on_create:
            obj.pop("status", None)
            if rtype.kind == "Service":
                obj["status"] = {"loadBalancer": {}}
        if rtype.default:
            rtype.default(obj, self._alloc)
        self._validate(rtype, obj, None)
        return self._commit(rtype, "ADDED", obj)

    def current(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.objects[rtype.key].get((namespace if rtype.namespaced else "", name))
        if obj is None:
            group = f".{rtype.group}" if rtype.group else ""
            raise ApiError(404, "NotFound", f'{rtype.plural}{group} "{name}" not found')
        return obj

    def update(
        self, rtype: ResourceType, namespace: str, name: str, body: Any, subresource: str
    ) -> Obj:
        old = self.current(rtype, namespace, name)
        new = self._check_body(rtype, body, namespace)
        meta = new["metadata"]
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        want_rv = meta.get("resourceVersion")
        if not want_rv and not rtype.unconditional_update:
            raise invalid(
                rtype.kind,
                name,
                ["metadata.resourceVersion: Invalid value: 0: must be specified for an update"],
            )
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rtype.plural} "{name}": the '
                "object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        if subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        else:
            for f in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if f in old["metadata"]:
                    meta[f] = old["metadata"][f]
                else:
                    meta.pop(f, None)
            if rtype.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        meta = new["metadata"]
        meta["name"] = name
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._validate(rtype, new, old)
        if rtype.tracks_generation and _spec_changed(old, new):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._commit(rtype, "DELETED", new)
        if new == old:
            return copy.deepcopy(old)  # a no-op write: same resourceVersion, no event
        return self._commit(rtype, "MODIFIED", new)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str,
    ) -> Obj:
        old = self.current(rtype, namespace, name)
        ctype = content_type.split(";")[0].strip()
        try:
            if ctype == "application/merge-patch+json":
                if not isinstance(patch, Mapping):
                    raise PatchError("a merge patch must be a JSON object")
                patched = merge_patch(old, patch)
            elif ctype == "application/strategic-merge-patch+json":
                if rtype.merge_keys is None:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media "
                        "types include: application/json-patch+json, "
                        "application/merge-patch+json, application/apply-patch+yaml",
                    )
                if not isinstance(patch, Mapping):
                    raise PatchError("a strategic merge patch must be a JSON object")
                patched = strategic_merge_patch(old, patch, rtype.merge_keys)
            elif ctype == "application/json-patch+json":
                patched = json_patch(old, patch)
            elif ctype == "application/apply-patch+yaml":
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "fake apiserver: server-side apply is not implemented",
                )
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        except PatchError as e:
            raise ApiError(422, "Invalid", str(e)) from e
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patch must result in an object")
        patched.setdefault("metadata", {})
        patched["metadata"].setdefault("resourceVersion", old["metadata"]["resourceVersion"])
        if rtype.namespaced:
            patched["metadata"]["namespace"] = namespace
        return self.update(rtype, namespace, name, patched, subresource)

    def delete(self, rtype: ResourceType, namespace: str, name: str, options: Any) -> Obj:
        old = self.current(rtype, namespace, name)
        pre = (options or {}).get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise ApiError(
                409,
                "Conflict",
                "Precondition failed: UID in precondition does not "
                "match the UID of the stored object",
            )
        if (
            pre.get("resourceVersion")
            and pre["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise ApiError(409, "Conflict", "Precondition failed: resourceVersion mismatch")
        obj = copy.deepcopy(old)
        if rtype.kind == CRD:
            return self._delete_crd(rtype, obj)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = now()
                return self._commit(rtype, "MODIFIED", obj)
            return copy.deepcopy(old)
        if rtype.kind == "Namespace":
            for t in {t.key: t for t in self.types.values() if t.namespaced}.values():
                for (ns, _), o in list(self.objects[t.key].items()):
                    if ns == name:
                        self._commit(t, "DELETED", copy.deepcopy(o))
        return self._commit(rtype, "DELETED", obj)

    def _delete_crd(self, crds: ResourceType, obj: Obj) -> Obj:
        """Mark the CRD terminating, delete its resources, and remove it once they are gone."""
        name = obj["metadata"]["name"]
        if not obj["metadata"].get("deletionTimestamp"):
            obj["metadata"]["deletionTimestamp"] = now()
            obj["metadata"]["finalizers"] = [CRD_CLEANUP]
            obj = self._commit(crds, "MODIFIED", obj)
        for key, crd in list(self._crd_of.items()):
            if crd != name:
                continue
            rtype = next(t for t in self.types.values() if t.key == key)
            for (ns, res_name), res in list(self.objects[key].items()):
                if not res["metadata"].get("deletionTimestamp"):
                    self.delete(rtype, ns, res_name, {})
        self._finish_crd_deletion(name)
        found = self._crd(name)
        return copy.deepcopy(found[1]) if found else obj

    def read_list(self, rtype: ResourceType, namespace: str, q: Mapping[str, str]) -> Obj:
        """A list request's answer: pages with continue tokens, as the real server."""
        match = q.get("resourceVersionMatch")
        if match == "Exact":
            raise ApiError(
                400, "BadRequest", "fake apiserver: resourceVersionMatch=Exact is not supported"
            )
        if match and not q.get("resourceVersion"):
            raise ApiError(400, "BadRequest", "resourceVersionMatch needs a resourceVersion")
        if q.get("resourceVersion", "").isdigit() and int(q["resourceVersion"]) > self.rv:
            raise ApiError(504, "Timeout", "Too large resource version")
        items = sorted(
            ((ns, name), o)
            for (ns, name), o in self.objects[rtype.key].items()
            if namespace in ("", ns)
        )
        list_rv = self.rv
        if q.get("continue"):
            try:
                token = json.loads(base64.b64decode(q["continue"]))
                list_rv, after = token["rv"], tuple(token["after"])
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, "BadRequest", "invalid continue token") from e
            changed = any(erv > list_rv and key == rtype.key for erv, key, _, _ in self.history)
            if changed or list_rv < self.compacted:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to "
                    "display a consistent list result. You can start a new list "
                    "without the continue parameter.",
                )
            items = [(k, o) for k, o in items if k > after]
        limit = int(q.get("limit") or 0)
        meta: Obj = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            items = items[:limit]
            token = {"rv": list_rv, "after": list(items[-1][0])}
            meta["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
        out = []
        for _, o in items:
            o = copy.deepcopy(o)
            if not rtype.is_custom:  # built-in list items carry no apiVersion/kind
                o.pop("apiVersion", None)
                o.pop("kind", None)
            out.append(o)
        return {
            "apiVersion": rtype.api_version,
            "kind": f"{rtype.kind}List",
            "metadata": meta,
            "items": out,
        }


def _spec_changed(old: Obj, new: Obj) -> bool:
    def body(o: Obj) -> Obj:
        return {k: v for k, v in o.items() if k not in ("metadata", "status")}

    return body(old) != body(new)


# The real API server's ObjectMeta validation: string values, 256 KiB of keys and values in all.
TOTAL_ANNOTATION_SIZE = 256 * 1024


def _annotation_errors(annotations: Any) -> list[str]:
    if annotations is None:
        return []
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        return ["metadata.annotations: Invalid value: must be a map of strings"]
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE:
        return [f"metadata.annotations: Too long: must have at most {TOTAL_ANNOTATION_SIZE} bytes"]
    return []
