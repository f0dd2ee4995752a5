"""The fake kube-apiserver is no kinder than the real one: Lease updates need their
resourceVersion, a Service that stops being a LoadBalancer loses its load-balancer status,
deleting a CRD deletes its resources (watches see it), ipMode exists only from 1.30, and
annotations are strings, 256 KiB in all."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from . import builders as b
from .conftest import client_of, serving
from .fakeapi import FakeKubeAPI
from .test_fakeapi import read_events, svc

pytestmark = pytest.mark.timeout(60)

POOLS = ("weir.dev", "v1alpha1", "loadbalancerippools")
STATUS = "status"


async def test_a_lease_update_needs_its_resource_version(
    api: client.ApiClient, fake: FakeKubeAPI
) -> None:
    coord = client.CoordinationV1Api(api)
    lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}
    created = await coord.create_namespaced_lease("default", lease)
    lease["spec"]["holderIdentity"] = "b"
    with pytest.raises(ApiException) as e:
        await coord.replace_namespaced_lease("l", "default", lease)
    assert e.value.status == 422 and "resourceVersion" in e.value.body
    lease["metadata"]["resourceVersion"] = created.metadata.resource_version
    replaced = await coord.replace_namespaced_lease("l", "default", lease)
    assert replaced.spec.holder_identity == "b"


async def test_a_service_that_stops_being_a_load_balancer_loses_its_status(
    fake: FakeKubeAPI,
) -> None:
    fake.create(svc("web"))
    ingress = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}, "conditions": []}
    fake.patch("v1", "Service", "default", "web", {"status": ingress}, subresource="status")
    fake.patch("v1", "Service", "default", "web", {"spec": {"type": "ClusterIP"}})
    assert fake.get("v1", "Service", "default", "web")["status"]["loadBalancer"] == {}


async def test_deleting_a_crd_deletes_its_resources_first(
    api: client.ApiClient, fake: FakeKubeAPI
) -> None:
    fake.create(b.pool("plain", "192.0.2.0/30"))
    held = b.pool("held", "198.51.100.0/30")
    held["metadata"]["finalizers"] = ["weir.dev/test"]
    fake.create(held)
    custom = client.CustomObjectsApi(api)
    resp = await custom.list_cluster_custom_object(
        *POOLS, watch=True, resource_version=str(fake.resource_version), _preload_content=False
    )
    crds = client.ApiextensionsV1Api(api)
    definition = fake.get(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "loadbalancerippools.weir.dev"
    )
    for f in ("uid", "resourceVersion", "creationTimestamp"):
        del definition["metadata"][f]
    await crds.delete_custom_resource_definition("loadbalancerippools.weir.dev")
    events = await read_events(resp, 2)
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in events) == [
        ("DELETED", "plain"),
        ("MODIFIED", "held"),
    ]
    crd = await crds.read_custom_resource_definition("loadbalancerippools.weir.dev")
    assert crd.metadata.deletion_timestamp is not None  # held by the pool's finalizer
    with pytest.raises(ApiException) as e:
        await custom.create_cluster_custom_object(*POOLS, b.pool("new", "203.0.113.0/30"))
    assert e.value.status == 405
    await custom.patch_cluster_custom_object(
        *POOLS,
        "held",
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    (gone,) = await read_events(resp, 1)
    assert (gone["type"], gone["object"]["metadata"]["name"]) == ("DELETED", "held")
    assert await resp.content.readline() == b""  # the watch ends with the CRD
    resp.close()
    with pytest.raises(ApiException) as e:
        await crds.read_custom_resource_definition("loadbalancerippools.weir.dev")
    assert e.value.status == 404
    fake.apply_yaml([definition])  # and it can be installed again
    fake.create(b.pool("again", "203.0.113.0/30"))


async def test_ip_mode_is_served_from_1_30_only(fake: FakeKubeAPI, tmp_path: Path) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}
    async with serving(version=(1, 29)) as old:
        async with client_of(old.write_kubeconfig(tmp_path / "old")) as api:
            version = await client.VersionApi(api).get_code()
        assert (version.major, version.minor) == ("1", "29")
        for server, mode in ((old, None), (fake, "VIP")):
            server.create(svc("web"))
            server.patch("v1", "Service", "default", "web", {"status": status}, subresource=STATUS)
            written = server.get("v1", "Service", "default", "web")["status"]["loadBalancer"]
            assert written["ingress"][0].get("ipMode") == mode
    # Unset, the newer server defaults it.
    status = {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}
    fake.patch("v1", "Service", "default", "web", {"status": status}, subresource="status")
    assert fake.get("v1", "Service", "default", "web")["status"]["loadBalancer"]["ingress"] == [
        {"ip": "192.0.2.2", "ipMode": "VIP"}
    ]


async def test_the_bgpadvertisement_status_is_a_subresource(
    api: client.ApiClient, fake: FakeKubeAPI
) -> None:
    """As deployed (deploy/base/crds): status is dropped on create and ignored on writes of
    the object, spec is ignored on writes of the status, a status write does not move the
    generation, a stale resourceVersion loses (409), and a condition must be well formed
    and alone of its type."""
    custom = client.CustomObjectsApi(api)
    ads = ("weir.dev", "v1alpha1", "bgpadvertisements")
    merge = {"_content_type": "application/merge-patch+json"}
    cond = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "ok",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    body = {**b.advertisement("a", localPref=100), "status": {"conditions": [cond]}}
    made = await custom.create_cluster_custom_object(*ads, body)
    assert "status" not in made and made["metadata"]["generation"] == 1
    written = await custom.patch_cluster_custom_object_status(
        *ads, "a", {"spec": {"localPref": 1}, "status": {"conditions": [cond]}}, **merge
    )
    assert written["spec"] == {"localPref": 100} and written["status"]["conditions"] == [cond]
    assert written["metadata"]["generation"] == 1
    edited = await custom.patch_cluster_custom_object(
        *ads, "a", {"spec": {"localPref": 5}, "status": {"conditions": None}}, **merge
    )
    assert edited["spec"] == {"localPref": 5} and edited["status"]["conditions"] == [cond]
    assert edited["metadata"]["generation"] == 2
    stale = {"metadata": {"resourceVersion": written["metadata"]["resourceVersion"]}}
    with pytest.raises(ApiException) as e:
        await custom.patch_cluster_custom_object_status(
            *ads, "a", {**stale, "status": {"conditions": []}}, **merge
        )
    assert e.value.status == 409
    for bad in ({"reason": ""}, {"reason": "not a reason"}, {"status": "Yes"}, {"type": "a b"}):
        with pytest.raises(ApiException) as e:
            await custom.patch_cluster_custom_object_status(
                *ads, "a", {"status": {"conditions": [{**cond, **bad}]}}, **merge
            )
        assert e.value.status == 422, bad
    twice = [cond, {**cond, "status": "False"}]  # a list-type map: one item per type
    with pytest.raises(ApiException) as e:
        await custom.patch_cluster_custom_object_status(
            *ads, "a", {"status": {"conditions": twice}}, **merge
        )
    assert e.value.status == 422 and "Duplicate value" in e.value.body


async def test_annotations_are_strings_of_at_most_256_kib_in_all(
    api: client.ApiClient, fake: FakeKubeAPI
) -> None:
    fake.create(b.node("node-a", "10.0.0.1"))
    core = client.CoreV1Api(api)
    big = {"metadata": {"annotations": {"a": "x" * 200_000, "b": "y" * 62_144}}}
    with pytest.raises(ApiException) as e:
        await core.patch_node("node-a", big)
    assert e.value.status == 422 and "Too long" in e.value.body
    with pytest.raises(ApiException) as e:
        await core.patch_node("node-a", {"metadata": {"annotations": {"a": 1}}})
    assert e.value.status in (400, 422)
    big["metadata"]["annotations"]["b"] = "y" * 62_142  # with the keys: 256 KiB exactly
    await core.patch_node("node-a", big)


async def test_a_write_over_3_mib_is_too_large(api: client.ApiClient, fake: FakeKubeAPI) -> None:
    """The real server decodes at most 3 MiB of a write (413), whatever the schema allows."""
    custom = client.CustomObjectsApi(api)
    ads = ("weir.dev", "v1alpha1", "bgpadvertisements")
    huge = b.advertisement("huge", communities=["x" * (3 * 2**20)])
    with pytest.raises(ApiException) as e:
        await custom.create_cluster_custom_object(*ads, huge)
    assert e.value.status == 413 and "limit is 3145728" in e.value.body
    await custom.create_cluster_custom_object(
        *ads, b.advertisement("big", communities=["x" * 2**20])
    )
