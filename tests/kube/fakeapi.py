"""An in-repo fake kube-apiserver on aiohttp, honest to the API's semantics.

It speaks the real HTTP protocol to real clients (kubernetes-asyncio, kubectl) through a
kubeconfig, and follows the API server's rules rather than any client's expectations:

- one resourceVersion sequence for the whole store (like etcd's revision); writes that change
  nothing do not bump it and produce no watch event;
- list returns the collection's resourceVersion; pagination with limit/continue (a continue
  token expires with 410 when the collection changed since the first page: the API allows
  this, the real server keeps a snapshot longer);
- watch from a resourceVersion replays the retained history after it; no resourceVersion or
  "0" starts with synthetic ADDED events; BOOKMARK events when allowWatchBookmarks; a too-old
  resourceVersion gets an ERROR event carrying a 410 Status (or HTTP 410 when the fake is made
  with gone_as_http=True); the event history is bounded and can be compacted, and open watches
  can be expired with ERROR 410 as when the server drops a watcher;
- optimistic concurrency: 409 Conflict on a stale metadata.resourceVersion in PUT or in a
  patch; custom resources refuse an unconditional PUT (422) as the real server does;
- status subresources: the main resource ignores status writes, /status ignores everything
  but status; create drops status where the real strategy does (Services, custom resources);
- patch: JSON merge patch, strategic merge patch for built-in kinds (415 for custom
  resources, as the real server), JSON patch; server-side apply is refused with 415;
- CustomResourceDefinitions registered through the API serve their resources with pruning,
  defaulting and validation from the OpenAPI v3 schema (see fakeapi_schema);
- discovery (/api, /apis, /version), bearer-token authentication, an optional authorizer
  (403), and a record of every request as RBAC attributes for RBAC tests.

Label and field selectors and resourceVersionMatch=Exact are refused with 400 rather than
ignored, so no test can silently rely on them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import json
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .fakeapi_certs import fake_tls
from .fakeapi_patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .fakeapi_schema import apply_defaults, prune_resource, validate
from .fakeapi_types import FakeAllocators, Obj, ResourceType, builtin_types, crd_types

JSON = "application/json"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the RBAC authorizer sees it."""

    user: str
    verb: str  # get list watch create update patch delete
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int = 0
    resource_version: str = ""  # list/watch: the resourceVersion asked for


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


def _invalid(kind: str, name: str, errs: list[str]) -> ApiError:
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {"; ".join(errs)}')


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class _Watcher:
    rtype: ResourceType
    namespace: str  # "" = all namespaces
    queue: asyncio.Queue[Obj | None]


@dataclass
class _Fault:
    code: int
    remaining: int
    verb: str | None
    resource: str | None


class FakeKubeAPI:
    def __init__(
        self,
        *,
        history_limit: int = 1000,
        bookmark_interval: float = 1.0,
        gone_as_http: bool = False,
        max_watch_seconds: float = 1800.0,
        tls: bool = True,
    ) -> None:
        # TLS by default: kubectl sends no bearer token over plain HTTP, and in-cluster
        # config always speaks HTTPS.
        self.tls = fake_tls() if tls else None
        self.history_limit = history_limit
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.max_watch_seconds = max_watch_seconds
        self.tokens: dict[str, str] = {}
        self.authorizer: Callable[[RequestRecord], bool] | None = None
        self.records: list[RequestRecord] = []
        self._types: dict[tuple[str, str, str], ResourceType] = {}  # group, version, plural
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._rv = 0
        self._history: deque[tuple[int, tuple[str, str], str, Obj]] = deque()
        self._compacted = 0  # watches from a resourceVersion below this get 410
        self._watchers: set[_Watcher] = set()
        self._faults: list[_Fault] = []
        self.refused = 0  # requests answered 503 while down
        self._down = False
        self._activity = asyncio.Event()  # set and replaced on every request, write, watch
        self._alloc = FakeAllocators()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        for t in builtin_types():
            self._register(t)
        for ns in DEFAULT_NAMESPACES:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=8 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        ssl_ctx = None
        if self.tls:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(*self.tls.server_files)
        self._site = web.TCPSite(self._runner, host, port or self.port, ssl_context=ssl_ctx)
        await self._site.start()
        self.port = self._runner.addresses[0][1]
        return self.url

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def stop_listening(self) -> None:
        """Close the port and every open watch (the server went away); start() resumes."""
        self.expire_watches(gone=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None

    async def close(self) -> None:
        await self.stop_listening()

    def write_kubeconfig(self, path: Path, *, user: str = "admin", token: str = "") -> Path:
        token = token or f"token-{user}"
        self.tokens[token] = user
        cluster: Obj = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.tls.ca_pem).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": user}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    # --- test controls --------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the event history: watches from any older resourceVersion now get 410."""
        self._history.clear()
        self._compacted = self._rv

    def expire_watches(self, *, gone: bool = True) -> None:
        """End every open watch, with an ERROR 410 event first when gone (as the server does
        with a watcher that fell too far behind), else by just closing the stream."""
        for w in list(self._watchers):
            if gone:
                w.queue.put_nowait(self._gone_event(w.rtype, self._rv))
            w.queue.put_nowait(None)

    def send_bookmarks(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(self._bookmark(w.rtype))

    def fail_requests(
        self, code: int, count: int, *, verb: str | None = None, resource: str | None = None
    ) -> None:
        """The next `count` requests matching verb/resource get HTTP `code`."""
        self._faults.append(_Fault(code, count, verb, resource))

    def set_down(self, down: bool) -> None:
        """While down, every request gets 503 and open watches are closed."""
        self._down = down
        if down:
            self.expire_watches(gone=False)

    def watch_count(self, resource: str | None = None) -> int:
        return sum(1 for w in self._watchers if resource in (None, w.rtype.plural))

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait (bounded) until predicate() holds; it is checked after every request, write
        and watch start or end."""
        async with asyncio.timeout(within):
            while not predicate():
                await self._activity.wait()

    def _poke(self) -> None:
        self._activity.set()
        self._activity = asyncio.Event()

    def calls(self, **match: str) -> list[RequestRecord]:
        return [r for r in self.records if all(getattr(r, k) == v for k, v in match.items())]

    # --- direct store access (tests set up state without HTTP) ----------------------------

    def create(self, obj: Mapping[str, Any]) -> Obj:
        rtype = self._type_of(obj)
        return self._create(rtype, obj.get("metadata", {}).get("namespace", ""), obj)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        rtype = self._type_for(api_version, kind)
        obj = self._objects[rtype.key].get((namespace if rtype.namespaced else "", name))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str = "") -> list[Obj]:
        rtype = self._type_for(api_version, kind)
        return [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self._objects[rtype.key].items())
            if not namespace or ns == namespace
        ]

    def update(self, obj: Mapping[str, Any], *, subresource: str = "") -> Obj:
        rtype = self._type_of(obj)
        meta = obj["metadata"]
        return self._update(rtype, meta.get("namespace", ""), meta["name"], obj, subresource)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: Any,
        *,
        subresource: str = "",
        content_type: str = "application/merge-patch+json",
    ) -> Obj:
        rtype = self._type_for(api_version, kind)
        return self._patch(rtype, namespace, name, patch, content_type, subresource)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> Obj:
        return self._delete(self._type_for(api_version, kind), namespace, name, {})

    def apply_yaml(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Create each document (CRDs first, so that their resources exist)."""
        docs = [d for d in docs if d]
        for d in sorted(docs, key=lambda d: d.get("kind") != "CustomResourceDefinition"):
            self.create(d)

    @property
    def resource_version(self) -> int:
        return self._rv

    # --- types ----------------------------------------------------------------------------

    def _register(self, t: ResourceType) -> None:
        self._types[(t.group, t.version, t.plural)] = t
        self._objects.setdefault(t.key, {})

    def _type_for(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for t in self._types.values():
            if t.group == group and t.version == version and t.kind == kind:
                return t
        raise ApiError(404, "NotFound", f"no kind {kind!r} is registered for {api_version!r}")

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        return self._type_for(obj.get("apiVersion", ""), obj.get("kind", ""))

    # --- core operations (synchronous: the event loop makes each one atomic) --------------

    def _commit(self, rtype: ResourceType, etype: str, obj: Obj) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        store = self._objects[rtype.key]
        key = (meta.get("namespace", ""), meta["name"])
        if etype == "DELETED":
            store.pop(key, None)
        else:
            store[key] = obj
        event_obj = copy.deepcopy(obj)
        self._history.append((self._rv, rtype.key, etype, event_obj))
        while len(self._history) > self.history_limit:
            self._compacted = self._history.popleft()[0]
        for w in list(self._watchers):
            if w.rtype.key == rtype.key and w.namespace in ("", key[0]):
                w.queue.put_nowait({"type": etype, "object": event_obj})
        self._poke()
        if etype == "ADDED" and rtype.kind == "CustomResourceDefinition":
            for t in crd_types(obj):
                self._register(t)
        if etype == "DELETED" and rtype.kind == "CustomResourceDefinition":
            for t in crd_types(obj):
                self._types.pop((t.group, t.version, t.plural), None)
                self._objects.pop(t.key, None)
        return copy.deepcopy(obj)

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
                raise _invalid(rtype.kind, name, errs)
        errs = []
        if old is not None and rtype.validate_update:
            errs += rtype.validate_update(old, obj)  # also carries immutable fields over
        if old is not None and rtype.default:
            rtype.default(obj, self._alloc)  # the server defaults on update too
        if rtype.validate:
            errs += rtype.validate(obj)
        if rtype.validate_status:
            errs += rtype.validate_status(obj)
        if errs:
            raise _invalid(rtype.kind, name, errs)

    def _create(self, rtype: ResourceType, namespace: str, body: Any) -> Obj:
        obj = self._check_body(rtype, body, namespace)
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _invalid(rtype.kind, "", ["metadata.name: Required value"])
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rtype.namespaced and ("", namespace) not in self._objects[("", "namespaces")]:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        key = (namespace if rtype.namespaced else "", meta["name"])
        if key in self._objects[rtype.key]:
            raise ApiError(409, "AlreadyExists", f'{rtype.plural} "{meta["name"]}" already exists')
        for f in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(f, None)
        meta.pop("generation", None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
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

    def _current(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._objects[rtype.key].get((namespace if rtype.namespaced else "", name))
        if obj is None:
            group = f".{rtype.group}" if rtype.group else ""
            raise ApiError(404, "NotFound", f'{rtype.plural}{group} "{name}" not found')
        return obj

    def _update(
        self, rtype: ResourceType, namespace: str, name: str, body: Any, subresource: str
    ) -> Obj:
        old = self._current(rtype, namespace, name)
        new = self._check_body(rtype, body, namespace)
        meta = new["metadata"]
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        want_rv = meta.get("resourceVersion")
        if not want_rv and not rtype.unconditional_update:
            raise _invalid(
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

    def _patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str,
    ) -> Obj:
        old = self._current(rtype, namespace, name)
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
        return self._update(rtype, namespace, name, patched, subresource)

    def _delete(self, rtype: ResourceType, namespace: str, name: str, options: Any) -> Obj:
        old = self._current(rtype, namespace, name)
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
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                return self._commit(rtype, "MODIFIED", obj)
            return copy.deepcopy(old)
        if rtype.kind == "Namespace":
            for t in {t.key: t for t in self._types.values() if t.namespaced}.values():
                for (ns, _), o in list(self._objects[t.key].items()):
                    if ns == name:
                        self._commit(t, "DELETED", copy.deepcopy(o))
        return self._commit(rtype, "DELETED", obj)

    # --- watch ----------------------------------------------------------------------------

    def _gone_event(self, rtype: ResourceType, rv: int) -> Obj:
        err = ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted + 1})")
        return {"type": "ERROR", "object": err.status()}

    def _bookmark(self, rtype: ResourceType) -> Obj:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": rtype.kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self._rv)},
            },
        }

    def _start_watch(self, rtype: ResourceType, namespace: str, rv_text: str | None) -> _Watcher:
        """Register a watcher and queue its initial events, atomically."""
        w = _Watcher(rtype, namespace, asyncio.Queue())
        if rv_text in (None, "", "0"):
            objs = [o for (ns, _), o in self._objects[rtype.key].items() if namespace in ("", ns)]
            for o in sorted(objs, key=lambda o: int(o["metadata"]["resourceVersion"])):
                w.queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            try:
                rv = int(rv_text)
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"invalid resource version {rv_text!r}") from e
            if rv < self._compacted:
                if self.gone_as_http:
                    raise ApiError(
                        410, "Expired", f"too old resource version: {rv} ({self._compacted + 1})"
                    )
                w.queue.put_nowait(self._gone_event(rtype, rv))
                w.queue.put_nowait(None)
                return w
            for erv, key, etype, o in self._history:
                if (
                    erv > rv
                    and key == rtype.key
                    and namespace in ("", o["metadata"].get("namespace", ""))
                ):
                    w.queue.put_nowait({"type": etype, "object": o})
        self._watchers.add(w)
        self._poke()
        return w

    async def _serve_watch(
        self, request: web.Request, rtype: ResourceType, namespace: str, q: Mapping[str, str]
    ) -> web.StreamResponse:
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        timeout = self.max_watch_seconds
        if q.get("timeoutSeconds"):
            timeout = min(timeout, float(q["timeoutSeconds"]))
        w = self._start_watch(rtype, namespace, q.get("resourceVersion"))
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        resp.enable_chunked_encoding()
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            await resp.prepare(request)
            while (left := deadline - time.monotonic()) > 0:
                wait = min(left, next_bookmark - time.monotonic()) if bookmarks else left
                try:
                    event = await asyncio.wait_for(w.queue.get(), max(wait, 0))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        event = self._bookmark(rtype)
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    else:
                        continue
                if event is None:
                    break
                if event["type"] == "BOOKMARK" and not bookmarks:
                    continue
                await resp.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            self._watchers.discard(w)
            self._poke()
        return resp

    # --- list -----------------------------------------------------------------------------

    def _list(self, rtype: ResourceType, namespace: str, q: Mapping[str, str]) -> Obj:
        match = q.get("resourceVersionMatch")
        if match == "Exact":
            raise ApiError(
                400, "BadRequest", "fake apiserver: resourceVersionMatch=Exact is not supported"
            )
        if match and not q.get("resourceVersion"):
            raise ApiError(400, "BadRequest", "resourceVersionMatch needs a resourceVersion")
        if q.get("resourceVersion", "").isdigit() and int(q["resourceVersion"]) > self._rv:
            raise ApiError(504, "Timeout", "Too large resource version")
        items = sorted(
            ((ns, name), o)
            for (ns, name), o in self._objects[rtype.key].items()
            if namespace in ("", ns)
        )
        list_rv = self._rv
        if q.get("continue"):
            try:
                token = json.loads(base64.b64decode(q["continue"]))
                list_rv, after = token["rv"], tuple(token["after"])
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, "BadRequest", "invalid continue token") from e
            changed = any(erv > list_rv and key == rtype.key for erv, key, _, _ in self._history)
            if changed or list_rv < self._compacted:
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

    # --- discovery ------------------------------------------------------------------------

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for t in self._types.values():
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return groups

    def _resource_list(self, group: str, version: str) -> Obj | None:
        types = [t for t in self._types.values() if t.group == group and t.version == version]
        if not types:
            return None
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = []
        for t in sorted(types, key=lambda t: t.plural):
            resources.append(
                {
                    "name": t.plural,
                    "singularName": t.kind.lower(),
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": verbs,
                    "shortNames": list(t.short_names),
                }
            )
            for sub in t.subresources():
                resources.append(
                    {
                        "name": f"{t.plural}/{sub}",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        gv = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-weir-fake",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            }
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        groups = self._groups()

        def group_obj(name: str) -> Obj:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": name,
                "versions": versions,
                "preferredVersion": versions[0],
            }

        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [group_obj(g) for g in sorted(groups)],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return group_obj(parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return self._resource_list(parts[1], parts[2])
        return None

    # --- HTTP -----------------------------------------------------------------------------

    def _route(self, method: str, parts: list[str], q: Mapping[str, str]) -> tuple:
        """-> (rtype, verb, namespace, name, subresource) or raise 404."""
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if not rest or not 1 <= len(rest) <= 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rtype = self._types.get((group, version, rest[0]))
        if rtype is None or (namespace and not rtype.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in rtype.subresources():
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name and rtype.namespaced and not namespace:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not name:
            verb = {
                "GET": "watch" if _truthy(q.get("watch")) else "list",
                "POST": "create",
                "DELETE": "deletecollection",
            }.get(method)
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None or verb == "deletecollection":
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        return rtype, verb, namespace, name, sub

    def _authenticate(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return self.tokens[auth[7:]]
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def _take_fault(self, rec: RequestRecord) -> int:
        for f in self._faults:
            if (
                f.remaining > 0
                and f.verb in (None, rec.verb)
                and f.resource in (None, rec.resource)
            ):
                f.remaining -= 1
                return f.code
        return 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        q = request.query
        rec: RequestRecord | None = None
        try:
            if self._down:
                self.refused += 1
                self._poke()
                raise ApiError(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                )
            user = self._authenticate(request)
            disc = self._discovery(parts) if request.method == "GET" else None
            if disc is not None:
                return web.json_response(disc)
            rtype, verb, ns, name, sub = self._route(request.method, parts, q)
            rec = RequestRecord(
                user,
                verb,
                rtype.group,
                rtype.plural,
                sub,
                ns,
                name,
                resource_version=q.get("resourceVersion", ""),
            )
            for unsupported in ("labelSelector", "fieldSelector", "dryRun"):
                if q.get(unsupported):
                    raise ApiError(
                        400, "BadRequest", f"fake apiserver: {unsupported} is not supported"
                    )
            if self.authorizer is not None and not self.authorizer(rec):
                what = f"{rtype.plural}/{sub}" if sub else rtype.plural
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{what} is forbidden: User "{user}" cannot '
                    f'{verb} resource "{what}" in API group "{rtype.group}"',
                )
            code = self._take_fault(rec)
            if code:
                raise ApiError(
                    code, "InternalError" if code >= 500 else "TooManyRequests", "injected fault"
                )
            if verb == "watch":
                self.records.append(dataclasses.replace(rec, code=200))
                return await self._serve_watch(request, rtype, ns, q)
            body = await request.json() if request.can_read_body else None
            result, status = self._dispatch(request, rtype, verb, ns, name, sub, body, q)
            self.records.append(dataclasses.replace(rec, code=status))
            self._poke()
            return web.json_response(result, status=status)
        except ApiError as e:
            if rec is not None:
                self.records.append(dataclasses.replace(rec, code=e.code))
                self._poke()
            return web.json_response(e.status(), status=e.code)
        except json.JSONDecodeError:
            err = ApiError(400, "BadRequest", "the body is not valid JSON")
            return web.json_response(err.status(), status=400)

    def _dispatch(
        self,
        request: web.Request,
        rtype: ResourceType,
        verb: str,
        ns: str,
        name: str,
        sub: str,
        body: Any,
        q: Mapping[str, str],
    ) -> tuple[Obj, int]:
        if verb == "list":
            return self._list(rtype, ns, q), 200
        if verb == "get":
            return copy.deepcopy(self._current(rtype, ns, name)), 200
        if verb == "create":
            return self._create(rtype, ns, body), 201
        if verb == "update":
            return self._update(rtype, ns, name, body, sub), 200
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "")
            return self._patch(rtype, ns, name, body, ctype, sub), 200
        return self._delete(rtype, ns, name, body), 200


def _truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, which the real server uses for query booleans."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _spec_changed(old: Obj, new: Obj) -> bool:
    def body(o: Obj) -> Obj:
        return {k: v for k, v in o.items() if k not in ("metadata", "status")}

    return body(old) != body(new)


async def _main() -> None:
    """Run the fake by hand: python -m tests.kube.fakeapi PORT KUBECONFIG [CRD-YAML...]."""
    import sys

    fake = FakeKubeAPI()
    for path in sys.argv[3:]:
        fake.apply_yaml(yaml.safe_load_all(Path(path).read_text()))  # noqa: ASYNC240
    await fake.start(port=int(sys.argv[1]))
    fake.write_kubeconfig(Path(sys.argv[2]))
    print(f"fake kube-apiserver on {fake.url}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
