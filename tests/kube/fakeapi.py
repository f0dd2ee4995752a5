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
  (403), and a record of every request as RBAC attributes for RBAC tests;
- ServiceAccount tokens: issued as TokenRequest does (service_account_token) and reviewed as
  TokenReview does, audiences, expiry (with the real 60 s leeway) and bound Pod included
  (fakeapi_tokens); one with the API's audience also authenticates requests to the fake;
- a Kubernetes version (1.32 by default) that decides what is served where versions differ:
  before 1.30, Service status.loadBalancer.ingress[].ipMode is dropped;
- the strictness of the real strategies: a Lease update needs its resourceVersion, a Service
  that stops being a LoadBalancer loses its status.loadBalancer, and deleting a CRD deletes
  its resources first (DELETED events; finalizers hold it), then ends their watches.

Label and field selectors and resourceVersionMatch=Exact are refused with 400 rather than
ignored, so no test can silently rely on them.

FakeKubeAPI puts together the store (fakeapi_store: objects, resourceVersions, history, write
semantics), the watches (fakeapi_watch) and the HTTP side (fakeapi_http), and gives the tests
their controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from weir.common.aio import Generation

from .fakeapi_certs import FakeTLS, fake_tls
from .fakeapi_http import ApiServer, RequestRecord
from .fakeapi_store import Store
from .fakeapi_types import DEFAULT_VERSION, Obj
from .fakeapi_watch import Watches


class FakeKubeAPI:
    def __init__(
        self,
        *,
        history_limit: int = 1000,
        bookmark_interval: float = 1.0,
        gone_as_http: bool = False,
        max_watch_seconds: float = 1800.0,
        tls: bool = True,
        version: tuple[int, int] = DEFAULT_VERSION,
    ) -> None:
        # Bumped on every request, write, and watch start or end: what wait_until waits on.
        self._activity = Generation()
        self.store = Store(self._activity, history_limit=history_limit, version=version)
        self.watches = Watches(
            self.store,
            self._activity,
            bookmark_interval=bookmark_interval,
            gone_as_http=gone_as_http,
            max_watch_seconds=max_watch_seconds,
        )
        # TLS by default: kubectl sends no bearer token over plain HTTP, and in-cluster
        # config always speaks HTTPS.
        self.server = ApiServer(
            self.store, self.watches, self._activity, fake_tls() if tls else None
        )
        self.tokens = self.server.tokens
        self.records = self.server.records

    # --- the server -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        return await self.server.start(host, port)

    async def stop_listening(self) -> None:
        """Close the port and every open watch (the server went away); start() resumes."""
        await self.server.stop_listening()

    async def close(self) -> None:
        await self.server.close()

    def write_kubeconfig(self, path: Path, *, user: str = "admin", token: str = "") -> Path:
        return self.server.write_kubeconfig(path, user=user, token=token)

    @property
    def tls(self) -> FakeTLS | None:
        return self.server.tls

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    # --- test controls --------------------------------------------------------------------

    @property
    def authorizer(self) -> Callable[[RequestRecord], bool] | None:
        return self.server.authorizer

    @authorizer.setter
    def authorizer(self, authorize: Callable[[RequestRecord], bool] | None) -> None:
        self.server.authorizer = authorize

    @property
    def gone_as_http(self) -> bool:
        return self.watches.gone_as_http

    @gone_as_http.setter
    def gone_as_http(self, value: bool) -> None:
        self.watches.gone_as_http = value

    @property
    def refused(self) -> int:
        """Requests answered 503 while down."""
        return self.server.refused

    def compact(self) -> None:
        """Forget the event history: watches from any older resourceVersion now get 410."""
        self.store.compact()

    def expire_watches(self, *, gone: bool = True) -> None:
        """End every open watch, with an ERROR 410 event first when gone (as the server does
        with a watcher that fell too far behind), else by just closing the stream."""
        self.watches.expire(gone=gone)

    def send_bookmarks(self) -> None:
        self.watches.send_bookmarks()

    def fail_requests(
        self, code: int, count: int, *, verb: str | None = None, resource: str | None = None
    ) -> None:
        """The next `count` requests matching verb/resource get HTTP `code`."""
        self.server.fail_requests(code, count, verb=verb, resource=resource)

    def set_down(self, down: bool) -> None:
        """While down, every request gets 503 and open watches are closed."""
        self.server.set_down(down)

    def watch_count(self, resource: str | None = None) -> int:
        return self.watches.count(resource)

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait (bounded) until predicate() holds; it is checked after every request, write
        and watch start or end."""
        async with asyncio.timeout(within):
            seen = self._activity.value
            while not predicate():
                seen = await self._activity.wait_past(seen)

    def calls(self, **match: str) -> list[RequestRecord]:
        return self.server.calls(**match)

    def service_account_token(
        self,
        namespace: str,
        account: str,
        *,
        audiences: tuple[str, ...] = (),
        pod: str | None = None,
        expiration: int = 3600,
        issued_at: float | None = None,
    ) -> str:
        """A token as the kubelet gets one for a projected volume (TokenRequest)."""
        return self.server.service_account_tokens.issue(
            namespace,
            account,
            audiences=audiences,
            pod=pod,
            expiration=expiration,
            issued_at=issued_at,
        )

    # --- direct store access (tests set up state without HTTP) ----------------------------

    def create(self, obj: Mapping[str, Any]) -> Obj:
        rtype = self.store.type_of(obj)
        return self.store.create(rtype, obj.get("metadata", {}).get("namespace", ""), obj)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        rtype = self.store.type_for(api_version, kind)
        obj = self.store.objects[rtype.key].get((namespace if rtype.namespaced else "", name))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str = "") -> list[Obj]:
        rtype = self.store.type_for(api_version, kind)
        return [copy.deepcopy(o) for o in self.store.objects_in(rtype, namespace)]

    def update(self, obj: Mapping[str, Any], *, subresource: str = "") -> Obj:
        rtype = self.store.type_of(obj)
        meta = obj["metadata"]
        return self.store.update(rtype, meta.get("namespace", ""), meta["name"], obj, subresource)

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
        rtype = self.store.type_for(api_version, kind)
        return self.store.patch(rtype, namespace, name, patch, content_type, subresource)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> Obj:
        return self.store.delete(self.store.type_for(api_version, kind), namespace, name, {})

    def apply_yaml(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Create each document (CRDs first, so that their resources exist)."""
        docs = [d for d in docs if d]
        for d in sorted(docs, key=lambda d: d.get("kind") != "CustomResourceDefinition"):
            self.create(d)

    @property
    def resource_version(self) -> int:
        return self.store.rv


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
