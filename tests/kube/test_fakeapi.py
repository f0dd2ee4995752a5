"""The fake kube-apiserver itself, driven by the real kubernetes-asyncio client (and kubectl)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.requirements import KUBECTL, requires

from .fakeapi import FakeKubeAPI

pytestmark = pytest.mark.timeout(60)

POOL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {
        "group": "example.dev",
        "scope": "Cluster",
        "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "color": {"type": "string", "default": "blue"},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {"count": {"type": "integer"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


def svc(name: str, ns: str = "default", **spec: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], **spec},
    }


async def read_events(resp, count: int) -> list[dict]:
    events = []
    async with asyncio.timeout(5):
        while len(events) < count:
            line = await resp.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


async def test_create_list_get_defaults(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_service("default", svc("web"))
    assert created.spec.cluster_ip and created.spec.ports[0].protocol == "TCP"
    assert created.spec.ports[0].node_port >= 30000
    resp = await core.list_service_for_all_namespaces(_preload_content=False)
    body = await resp.json()
    assert body["kind"] == "ServiceList"
    assert body["metadata"]["resourceVersion"] == str(fake.resource_version)
    assert [i["metadata"]["name"] for i in body["items"]] == ["web"]
    assert "kind" not in body["items"][0]  # built-in list items carry no kind
    got = await core.read_namespaced_service("web", "default")
    assert got.metadata.uid == created.metadata.uid
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_service("default", svc("web"))
    assert e.value.status == 409
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_service("nope", svc("web", "nope"))
    assert e.value.status == 404


async def test_optimistic_concurrency_and_noop(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    core = client.CoreV1Api(api)
    first = (await core.create_namespaced_service("default", svc("web"))).to_dict()
    raw = fake.get("v1", "Service", "default", "web")
    raw["metadata"]["labels"] = {"a": "b"}
    updated = await core.replace_namespaced_service("web", "default", raw)
    assert updated.metadata.resource_version != first["metadata"]["resource_version"]
    raw["metadata"]["labels"] = {"a": "c"}  # still the old resourceVersion
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_service("web", "default", raw)
    assert e.value.status == 409
    rv = fake.resource_version
    same = fake.get("v1", "Service", "default", "web")
    again = await core.replace_namespaced_service("web", "default", same)
    assert again.metadata.resource_version == same["metadata"]["resourceVersion"]
    assert fake.resource_version == rv  # a write that changes nothing is no event


async def test_status_subresource(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_service("default", svc("web"))
    raw = fake.get("v1", "Service", "default", "web")
    raw["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    await core.replace_namespaced_service("web", "default", raw)
    assert fake.get("v1", "Service", "default", "web")["status"] == {"loadBalancer": {}}
    cond = {
        "type": "example.dev/Ready",
        "status": "True",
        "reason": "Fine",
        "message": "",
        "lastTransitionTime": "2024-01-01T00:00:00Z",
    }
    patch = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}, "conditions": [cond]}}
    await core.patch_namespaced_service_status("web", "default", patch)  # strategic merge
    other = {**cond, "type": "other/Thing"}
    await core.patch_namespaced_service_status(
        "web", "default", {"status": {"conditions": [other]}}
    )
    status = fake.get("v1", "Service", "default", "web")["status"]
    assert status["loadBalancer"]["ingress"] == [{"ip": "192.0.2.1", "ipMode": "VIP"}]
    assert [c["type"] for c in status["conditions"]] == ["example.dev/Ready", "other/Thing"]
    bad = {**cond, "reason": "not a reason!"}
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_service_status(
            "web", "default", {"status": {"conditions": [bad]}}
        )
    assert e.value.status == 422
    stale = {"metadata": {"resourceVersion": "1"}, "status": {"conditions": None}}
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_service_status("web", "default", stale)
    assert e.value.status == 409


async def test_watch_bookmarks_and_history(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_service("default", svc("a"))
    rv = fake.resource_version
    await core.create_namespaced_service("default", svc("b"))
    await core.delete_namespaced_service("a", "default")
    resp = await core.list_service_for_all_namespaces(
        watch=True, resource_version=str(rv), allow_watch_bookmarks=True, _preload_content=False
    )
    events = await read_events(resp, 3)
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "b"),
        ("DELETED", "a"),
        ("BOOKMARK", None),
    ]
    assert events[0]["object"]["kind"] == "Service"  # watch objects carry their kind
    assert events[2]["object"]["metadata"]["resourceVersion"] == str(fake.resource_version)
    fake.create(svc("c"))
    (live,) = await read_events(resp, 1)
    assert live["type"] == "ADDED" and live["object"]["metadata"]["name"] == "c"
    resp.close()


async def test_watch_gone(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_service("default", svc("a"))
    old = fake.resource_version
    fake.create(svc("b"))
    fake.compact()
    resp = await core.list_service_for_all_namespaces(
        watch=True, resource_version=str(old - 1), _preload_content=False
    )
    (ev,) = await read_events(resp, 1)
    assert ev["type"] == "ERROR" and ev["object"]["code"] == 410
    assert await resp.content.readline() == b""  # and the stream ends
    # An open watch expired by the server ends the same way.
    resp = await core.list_service_for_all_namespaces(
        watch=True, resource_version=str(fake.resource_version), _preload_content=False
    )
    assert fake.watch_count("services") == 1  # registered before the response headers
    fake.expire_watches()
    (ev,) = await read_events(resp, 1)
    assert ev["type"] == "ERROR" and ev["object"]["reason"] == "Expired"
    fake.gone_as_http = True
    resp = await core.list_service_for_all_namespaces(
        watch=True, resource_version=str(old - 1), _preload_content=False
    )
    assert resp.status == 410


async def test_pagination(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    for i in range(5):
        fake.create(svc(f"s{i}"))
    core = client.CoreV1Api(api)
    page = await core.list_service_for_all_namespaces(limit=2)
    names = [s.metadata.name for s in page.items]
    while page.metadata._continue:
        page = await core.list_service_for_all_namespaces(
            limit=2, _continue=page.metadata._continue
        )
        names += [s.metadata.name for s in page.items]
    assert names == [f"s{i}" for i in range(5)]
    page = await core.list_service_for_all_namespaces(limit=2)
    fake.create(svc("late"))
    with pytest.raises(ApiException) as e:
        await core.list_service_for_all_namespaces(limit=2, _continue=page.metadata._continue)
    assert e.value.status == 410


async def test_custom_resources(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    ext = client.ApiextensionsV1Api(api)
    await ext.create_custom_resource_definition(POOL_CRD)
    custom = client.CustomObjectsApi(api)
    body = {
        "apiVersion": "example.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 2, "unknown": 1},
        "status": {"count": 5},
    }
    made = await custom.create_cluster_custom_object("example.dev", "v1", "widgets", body)
    assert made["spec"] == {"size": 2, "color": "blue"}  # pruned and defaulted
    assert "status" not in made  # status subresource: create drops it
    bad = {**body, "metadata": {"name": "x"}, "spec": {"size": 0}}
    with pytest.raises(ApiException) as e:
        await custom.create_cluster_custom_object("example.dev", "v1", "widgets", bad)
    assert e.value.status == 422
    # A dict body defaults to application/json-patch+json here, which needs a list: 422.
    with pytest.raises(ApiException) as e:
        await custom.patch_cluster_custom_object_status(
            "example.dev", "v1", "widgets", "w", {"status": {"count": 1}}
        )
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        await custom.patch_cluster_custom_object_status(
            "example.dev",
            "v1",
            "widgets",
            "w",
            {"status": {"count": 1}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert e.value.status == 415
    await custom.patch_cluster_custom_object_status(
        "example.dev",
        "v1",
        "widgets",
        "w",
        {"status": {"count": 1, "junk": 2}},
        _content_type="application/merge-patch+json",
    )
    got = fake.get("example.dev/v1", "Widget", "", "w")
    assert got["status"] == {"count": 1}
    unconditional = {k: v for k, v in got.items()}
    unconditional["metadata"] = {"name": "w"}
    with pytest.raises(ApiException) as e:
        await custom.replace_cluster_custom_object(
            "example.dev", "v1", "widgets", "w", unconditional
        )
    assert e.value.status == 422
    lst = await custom.list_cluster_custom_object("example.dev", "v1", "widgets")
    assert lst["items"][0]["kind"] == "Widget"


async def test_leases_events_secrets(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    coord = client.CoordinationV1Api(api)
    lease = {
        "metadata": {"name": "l"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "renewTime": "2024-01-01T00:00:00.000000Z",
        },
    }
    await coord.create_namespaced_lease("default", lease)
    lease["spec"]["renewTime"] = "2024-01-01T00:00:00Z"  # not a MicroTime
    lease["metadata"] = {"name": "m"}
    with pytest.raises(ApiException) as e:
        await coord.create_namespaced_lease("default", lease)
    assert e.value.status == 422
    core = client.CoreV1Api(api)
    event = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Service", "namespace": "kube-system", "name": "x"},
        "reason": "Because",
        "type": "Normal",
    }
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_event("default", event)
    assert e.value.status == 422
    event["involvedObject"]["namespace"] = "default"
    await core.create_namespaced_event("default", event)
    await core.create_namespaced_secret(
        "default", {"metadata": {"name": "s"}, "stringData": {"password": "pw"}}
    )
    secret = fake.get("v1", "Secret", "default", "s")
    assert secret["data"] == {"password": "cHc="} and "stringData" not in secret


async def test_auth_and_records(api: client.ApiClient, fake: FakeKubeAPI, tmp_path: Path) -> None:
    core = client.CoreV1Api(api)
    fake.authorizer = lambda rec: rec.verb != "delete"
    await core.create_namespaced_service("default", svc("web"))
    with pytest.raises(ApiException) as e:
        await core.delete_namespaced_service("web", "default")
    assert e.value.status == 403
    assert [(r.verb, r.resource, r.code) for r in fake.calls(user="admin")] == [
        ("create", "services", 201),
        ("delete", "services", 403),
    ]
    fake.fail_requests(503, 1, verb="get")
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_service("web", "default")
    assert e.value.status == 503
    await core.read_namespaced_service("web", "default")
    fake.tokens.clear()
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_service("web", "default")
    assert e.value.status == 401


@requires(KUBECTL)
async def test_kubectl_drives_the_fake(fake: FakeKubeAPI, kubeconfig: Path) -> None:
    fake.create(svc("web"))
    fake.create(POOL_CRD)
    proc = await asyncio.to_thread(
        subprocess.run,
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "services,widgets", "-A", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)["items"]
    assert [i["metadata"]["name"] for i in items] == ["web"]


def test_patch_formats() -> None:
    from .fakeapi_patch import PatchError, json_patch, merge_patch, strategic_merge_patch

    doc = {"a": {"b": 1, "c": [1, 2]}, "conds": [{"type": "X", "v": 1}, {"type": "Y", "v": 1}]}
    assert merge_patch(doc, {"a": {"b": None, "c": [3]}}) == {
        "a": {"c": [3]},
        "conds": doc["conds"],
    }
    keys = {("conds",): "type"}
    merged = strategic_merge_patch(doc, {"conds": [{"type": "Y", "v": 2}, {"type": "Z"}]}, keys)
    assert merged["conds"] == [{"type": "X", "v": 1}, {"type": "Y", "v": 2}, {"type": "Z"}]
    with pytest.raises(PatchError):
        strategic_merge_patch(doc, {"$patch": "replace"}, keys)
    ops = [
        {"op": "add", "path": "/a/c/-", "value": 9},
        {"op": "remove", "path": "/a/b"},
        {"op": "test", "path": "/a/c/0", "value": 1},
        {"op": "move", "from": "/a/c", "path": "/d"},
        {"op": "replace", "path": "/conds/0/v", "value": 5},
    ]
    assert json_patch(doc, ops) == {
        "a": {},
        "d": [1, 2, 9],
        "conds": [{"type": "X", "v": 5}, {"type": "Y", "v": 1}],
    }
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/a/b", "value": 2}])
