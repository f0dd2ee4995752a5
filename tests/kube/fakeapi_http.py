"""The fake kube-apiserver's HTTP side: routing, discovery, bearer-token authentication, an
optional authorizer, injected faults and outages, and a record of every request as RBAC
attributes (see fakeapi.py)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from weir.common.aio import Generation

from .fakeapi_certs import FakeTLS
from .fakeapi_store import ApiError, Store
from .fakeapi_tokens import ServiceAccountTokens
from .fakeapi_types import Obj, ResourceType
from .fakeapi_watch import Watches, truthy

# What the real API server decodes of a write (its MaxRequestBodyBytes: twice etcd's 1.5 MiB).
MAX_BODY = 3 * 2**20


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


@dataclass
class _Fault:
    code: int
    remaining: int
    verb: str | None
    resource: str | None


class ApiServer:
    """Serves a store and its watches over HTTP(S) to real clients."""

    def __init__(
        self, store: Store, watches: Watches, activity: Generation, tls: FakeTLS | None
    ) -> None:
        self.store = store
        self.watches = watches
        self.tls = tls
        self.tokens: dict[str, str] = {}
        self.service_account_tokens = ServiceAccountTokens(store)
        self.authorizer: Callable[[RequestRecord], bool] | None = None
        self.records: list[RequestRecord] = []
        self.refused = 0  # requests answered 503 while down
        self.down = False
        self._faults: list[_Fault] = []
        self._activity = activity
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

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
        self.watches.expire(gone=False)
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

    def fail_requests(
        self, code: int, count: int, *, verb: str | None = None, resource: str | None = None
    ) -> None:
        """The next `count` requests matching verb/resource get HTTP `code`."""
        self._faults.append(_Fault(code, count, verb, resource))

    def set_down(self, down: bool) -> None:
        """While down, every request gets 503 and open watches are closed."""
        self.down = down
        if down:
            self.watches.expire(gone=False)

    def calls(self, **match: str) -> list[RequestRecord]:
        return [r for r in self.records if all(getattr(r, k) == v for k, v in match.items())]

    # --- discovery ------------------------------------------------------------------------

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for t in self.store.types.values():
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return groups

    def _resource_list(self, group: str, version: str) -> Obj | None:
        types = [t for t in self.store.types.values() if t.group == group and t.version == version]
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
            major, minor = self.store.version
            return {
                "major": str(major),
                "minor": str(minor),
                "gitVersion": f"v{major}.{minor}.0-weir-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.23",
                "compiler": "gc",
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
        rtype = self.store.types.get((group, version, rest[0]))
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
                "GET": "watch" if truthy(q.get("watch")) else "list",
                "POST": "create",
                "DELETE": "deletecollection",
            }.get(method)
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None or verb == "deletecollection" or (rtype.virtual and verb != "create"):
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        return rtype, verb, namespace, name, sub

    def _authenticate(self, request: web.Request) -> str:
        """A static token's user, or a ServiceAccount token's (for the API's audience only)."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return self.tokens[auth[7:]]
        if auth.startswith("Bearer "):
            try:
                user, _ = self.service_account_tokens.authenticate(auth[7:], ())
            except ValueError:
                pass
            else:
                return str(user["username"])
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
            if self.down:
                self.refused += 1
                self._activity.bump()
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
                return await self.watches.serve(request, rtype, ns, q)
            body = await self._body(request)
            result, status = self._dispatch(request, rtype, verb, ns, name, sub, body, q)
            self.records.append(dataclasses.replace(rec, code=status))
            self._activity.bump()
            return web.json_response(result, status=status)
        except ApiError as e:
            if rec is not None:
                self.records.append(dataclasses.replace(rec, code=e.code))
                self._activity.bump()
            return web.json_response(e.status(), status=e.code)
        except json.JSONDecodeError:
            err = ApiError(400, "BadRequest", "the body is not valid JSON")
            return web.json_response(err.status(), status=400)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        """The request's JSON; 413 beyond what the real server decodes (3 MiB, whatever
        etcd would take)."""
        if not request.can_read_body:
            return None
        raw = await request.read()
        if len(raw) > MAX_BODY:
            raise ApiError(
                413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}"
            )
        return json.loads(raw)

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
            return self.store.read_list(rtype, ns, q), 200
        if verb == "get":
            return copy.deepcopy(self.store.current(rtype, ns, name)), 200
        if verb == "create" and rtype.virtual:
            return self.service_account_tokens.review(body), 201
        if verb == "create":
            return self.store.create(rtype, ns, body), 201
        if verb == "update":
            return self.store.update(rtype, ns, name, body, sub), 200
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "")
            return self.store.patch(rtype, ns, name, body, ctype, sub), 200
        return self.store.delete(rtype, ns, name, body), 200
