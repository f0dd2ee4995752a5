"""Fixtures for the Kubernetes integration tests: the fake API server and real clients."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client, config
from weir.controller.kube.api import KubeAPI

from tests.requirements import KUBECTL, require

from .fakeapi import FakeKubeAPI

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "base" / "crds"
NAMESPACE = "weir-system"
OLDEST_SUPPORTED = (1, 24)  # the oldest Kubernetes Weir supports (docs/LIMITS.md)


def install_weir(fake: FakeKubeAPI) -> None:
    """Weir's CRDs (from deploy/) and its namespace, as `kubectl apply -k` would."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        fake.apply_yaml(yaml.safe_load_all(path.read_text()))
    fake.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})


@contextlib.asynccontextmanager
async def serving(**options: object) -> AsyncIterator[FakeKubeAPI]:
    """A started fake API server with Weir installed (options: FakeKubeAPI's)."""
    api = FakeKubeAPI(bookmark_interval=0.2, **options)
    install_weir(api)
    await api.start()
    try:
        yield api
    finally:
        await api.close()


@contextlib.asynccontextmanager
async def client_of(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    async with client.ApiClient(cfg) as api_client:
        yield api_client


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with serving() as api:
        yield api


@pytest.fixture
async def oldest_fake() -> AsyncIterator[FakeKubeAPI]:
    """The fake as the oldest Kubernetes Weir supports (no Service ipMode, for one)."""
    async with serving(version=OLDEST_SUPPORTED) as api:
        yield api


@pytest.fixture
def kubeconfig(fake: FakeKubeAPI, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    async with client_of(kubeconfig) as api_client:
        yield api_client


@pytest.fixture
def kube(api: client.ApiClient) -> KubeAPI:
    return KubeAPI(api, request_timeout=5.0)


def render_deploy() -> list[dict]:
    """`kubectl kustomize deploy/` as a list of objects (kubectl renders deploy/ offline)."""
    require(KUBECTL)
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]
