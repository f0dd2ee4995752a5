"""weir.controller.kube.api: client configuration (kubeconfig and in-cluster) and raw requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio.config import incluster_config
from weir.controller.kube.api import SERVICES, ApiError, KubeAPI, load_client

from . import builders as b
from .fakeapi import FakeKubeAPI

pytestmark = pytest.mark.timeout(30)


async def test_in_cluster_configuration(
    fake: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pod's view: service host/port from the environment, the ServiceAccount token and
    the cluster CA from their files, HTTPS."""
    assert fake.tls is not None
    token = tmp_path / "token"
    token.write_text("sa-token")
    fake.tokens["sa-token"] = "system:serviceaccount:weir-system:weir-controller"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(fake.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(fake.tls.ca_file))
    fake.create(b.service("web"))
    api_client = await load_client(None)
    async with api_client:
        items, _ = await KubeAPI(api_client).list_all(SERVICES)
    assert [i["metadata"]["name"] for i in items] == ["web"]
    assert fake.records[-1].user == "system:serviceaccount:weir-system:weir-controller"


async def test_errors_carry_the_status(kube: KubeAPI, fake: FakeKubeAPI) -> None:
    with pytest.raises(ApiError) as e:
        await kube.get(SERVICES, "default", "missing")
    assert (e.value.status, e.value.reason) == (404, "NotFound")
    fake.create(b.service("web"))
    with pytest.raises(ApiError) as e:
        await kube.patch(SERVICES, "default", "web", {"status": {}}, subresource="nope")
    assert e.value.status == 404
