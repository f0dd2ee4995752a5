"""The Kubernetes API in raw JSON, through kubernetes-asyncio's ApiClient.

Everything Weir reads and writes goes through `KubeAPI`: sources keep objects as the JSON the
server sent (what the state's parsers take), and writers send JSON patches, so no generated
model classes sit in between. The ApiClient still does what a client must: kubeconfig and
in-cluster configuration, TLS, bearer tokens and their refresh.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from weir.common.logs import get_logger

log = get_logger("weir.kubeapi")

MAX_EVENT_BYTES = 16 * 2**20  # one watch event line; etcd objects are at most 1.5 MiB

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"  # RFC 6902: a list of operations


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        parts = [base, self.plural, name, subresource]
        return "/".join(p for p in parts if p)

    def typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """obj with apiVersion and kind, which built-in list items come without."""
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        return obj


SERVICES = Resource("Service", "", "v1", "services", True)
ENDPOINT_SLICES = Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True)
NODES = Resource("Node", "", "v1", "nodes", False)
NAMESPACES = Resource("Namespace", "", "v1", "namespaces", False)
SECRETS = Resource("Secret", "", "v1", "secrets", True)
EVENTS = Resource("Event", "", "v1", "events", True)
LEASES = Resource("Lease", "coordination.k8s.io", "v1", "leases", True)
IP_POOLS = Resource("LoadBalancerIPPool", "weir.dev", "v1alpha1", "loadbalancerippools", False)
BGP_PEERS = Resource("BGPPeer", "weir.dev", "v1alpha1", "bgppeers", False)
BGP_ADVERTISEMENTS = Resource(
    "BGPAdvertisement", "weir.dev", "v1alpha1", "bgpadvertisements", False
)


class ApiError(Exception):
    """A request the API server refused (status >= 400), with its Status reason/message."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status, self.reason, self.message = status, reason, message

    @classmethod
    def from_body(cls, status: int, body: bytes) -> ApiError:
        try:
            doc = json.loads(body)
        except ValueError:
            return cls(status, "", body[:200].decode(errors="replace"))
        if not isinstance(doc, Mapping):
            return cls(status)
        return cls(status, str(doc.get("reason", "")), str(doc.get("message", "")))

    @property
    def gone(self) -> bool:
        return self.status == 410


class WriteFailure(enum.Enum):
    """Why a write did not happen (write() returns it instead of raising)."""

    CONFLICT = "conflict"  # 409: the object changed; retry from a fresh read
    GONE = "gone"  # 404: deleted meanwhile, nothing left to write
    ERROR = "error"  # any other refusal, or the API unreachable: logged


T = TypeVar("T")


async def write(call: Awaitable[T], what: str) -> T | WriteFailure:
    """Await one write to the API; a refusal becomes a WriteFailure, logged once here."""
    try:
        return await call
    except ApiError as e:
        if e.status == 409:
            log.debug("conflict; retrying from a fresh read", object=what)
            return WriteFailure.CONFLICT
        if e.status == 404:
            log.debug("gone before the write", object=what)
            return WriteFailure.GONE
        log.warning("write failed", object=what, error=str(e))
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        log.warning("write failed", object=what, error=repr(e))
    return WriteFailure.ERROR


async def load_client(
    kubeconfig: str | None = None, context: str | None = None
) -> client.ApiClient:
    """An ApiClient from a kubeconfig file when given; else in-cluster configuration when
    running in a Pod; else the default kubeconfig (~/.kube/config, $KUBECONFIG)."""
    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=cfg
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(context=context, client_configuration=cfg)
    return client.ApiClient(cfg)


class KubeAPI:
    """Raw-JSON requests over an ApiClient (which it does not own: the caller closes it)."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = 30.0) -> None:
        self.client = api_client
        self.request_timeout = request_timeout

    async def _call(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: Any,
        content_type: str,
        deadline: aiohttp.ClientTimeout | float,
    ) -> aiohttp.ClientResponse:
        return await self.client.call_api(
            path,
            method,
            query_params=list(query),
            header_params={"Accept": JSON, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=deadline,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer, or ApiError."""
        resp = await self._call(method, path, query, body, content_type, self.request_timeout)
        data = await _read_all(resp)
        if resp.status >= 400:
            raise ApiError.from_body(resp.status, data)
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise ApiError(resp.status, "BadResponse", f"the answer is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise ApiError(resp.status, "BadResponse", "the answer is not a JSON object")
        return doc

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", res.path(namespace, name))

    async def create(self, res: Resource, namespace: str, obj: Mapping[str, Any]) -> dict:
        return await self.request("POST", res.path(namespace), body=obj)

    async def replace(self, res: Resource, namespace: str, obj: Mapping[str, Any]) -> dict:
        return await self.request("PUT", res.path(namespace, obj["metadata"]["name"]), body=obj)

    async def patch(
        self,
        res: Resource,
        namespace: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],  # a list with JSON_PATCH
        *,
        subresource: str = "",
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        path = res.path(namespace, name, subresource)
        return await self.request("PATCH", path, body=patch, content_type=content_type)

    async def list_all(
        self, res: Resource, namespace: str = "", *, page_size: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object (typed) and the list's resourceVersion. Pages are consistent with the
        first one; when the server expires the continue token, one unpaginated list instead."""
        items: list[Any] = []
        cont = ""
        try:
            while True:
                page = await self._list_page(res, namespace, page_size, cont)
                items += page.get("items") or []
                meta = page.get("metadata") or {}
                cont = meta.get("continue") or ""
                if not cont:
                    break
        except ApiError as e:
            if not (e.gone and cont):
                raise
            page = await self._list_page(res, namespace, 0, "")
            items, meta = page.get("items") or [], page.get("metadata") or {}
        typed = [res.typed(o) for o in items if isinstance(o, dict)]
        return typed, str(meta.get("resourceVersion") or "")

    async def _list_page(
        self, res: Resource, namespace: str, limit: int, cont: str
    ) -> dict[str, Any]:
        query = [("limit", str(limit))]
        if cont:
            query.append(("continue", cont))
        return await self.request("GET", res.path(namespace), query=query)

    async def watch(
        self, res: Resource, namespace: str, resource_version: str, timeout_seconds: int
    ) -> aiohttp.ClientResponse:
        """Open a watch (with bookmarks) from resource_version; read it with read_event().

        The server ends the stream after timeout_seconds; the client gives up if nothing at
        all arrives for a while longer (bookmarks keep a healthy stream talking).
        """
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        timeout = aiohttp.ClientTimeout(
            total=timeout_seconds + 30, sock_connect=self.request_timeout
        )
        resp = await self._call("GET", res.path(namespace), query, None, JSON, timeout)
        if resp.status >= 400:
            raise ApiError.from_body(resp.status, await _read_all(resp))
        return resp


async def _read_all(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body; the connection goes back to the pool even when reading fails."""
    try:
        return await resp.read()
    finally:
        resp.release()


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """The next watch event, or None when the server ended the stream."""
    while True:
        line = await resp.content.readuntil(b"\n", max_size=MAX_EVENT_BYTES)
        if not line:
            return None
        if line.strip():
            event = json.loads(line)
            if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                raise ValueError(f"malformed watch event: {line[:200]!r}")
            return event
