"""The controller's CA, kept in a Secret it owns, and its certificate published in a
ConfigMap for the agents to trust.

    authority = await load_authority(api, "weir-system", "weir-controller-ca")
    await publish_bundle(api, "weir-system", "weir-ca-bundle", authority.cert_pem)

Every replica uses the same CA: the first to start creates the Secret (a replica that loses
the race to create it reads the winner's). The bundle ConfigMap (key ca.crt) is written when
missing or different, and kept so (a deleted or edited ConfigMap comes back).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.controller.kube.api import SECRETS, ApiError, KubeAPI, Resource
from weir.controller.plane.authority import Authority

log = get_logger("weir.controller.pki")

CONFIG_MAPS = Resource("ConfigMap", "", "v1", "configmaps", True)
BUNDLE_KEY = "ca.crt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "weir-controller"}
ATTEMPTS = 5  # conflicts with another replica writing the same thing


async def _written(write: Awaitable[Any]) -> bool:
    """Whether the write went through; False when another replica wrote first (409)."""
    try:
        await write
    except ApiError as e:
        if e.status == 409:
            return False
        raise
    return True


async def load_authority(api: KubeAPI, namespace: str, name: str) -> Authority:
    """The CA from the Secret, created first when there is none."""
    for _ in range(ATTEMPTS):
        try:
            secret = await api.get(SECRETS, namespace, name)
        except ApiError as e:
            if e.status != 404:
                raise
        else:
            data = secret.get("data") or {}
            try:
                return Authority.from_pem(
                    base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
                )
            except (KeyError, ValueError) as e:
                raise SystemExit(
                    f"weir-controller: Secret {namespace}/{name} does not hold a CA "
                    f"(tls.crt, tls.key): {e}; delete it and a new CA is made"
                ) from None
        authority = Authority.generate()
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "labels": MANAGED_BY},
            "data": {
                "tls.crt": base64.b64encode(authority.cert_pem).decode(),
                "tls.key": base64.b64encode(authority.key_pem).decode(),
            },
        }
        if not await _written(api.create(SECRETS, namespace, body)):
            continue  # another replica made it first: use theirs
        log.info("CA created", secret=f"{namespace}/{name}", not_after=str(authority.not_after))
        return authority
    raise SystemExit(f"weir-controller: Secret {namespace}/{name}: no CA after {ATTEMPTS} tries")


async def publish_bundle(api: KubeAPI, namespace: str, name: str, bundle: bytes) -> None:
    """Make the ConfigMap hold the bundle (conflicts with other replicas are retried)."""
    data = {BUNDLE_KEY: bundle.decode()}
    for _ in range(ATTEMPTS):
        try:
            current: dict[str, Any] = await api.get(CONFIG_MAPS, namespace, name)
        except ApiError as e:
            if e.status != 404:
                raise
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": MANAGED_BY},
                "data": data,
            }
            if not await _written(api.create(CONFIG_MAPS, namespace, body)):
                continue
            log.info("CA bundle published", configmap=f"{namespace}/{name}")
            return
        if current.get("data") == data:
            return
        current["data"] = data
        if not await _written(api.replace(CONFIG_MAPS, namespace, current)):
            continue
        log.info("CA bundle updated", configmap=f"{namespace}/{name}")
        return


async def keep_bundle(
    api: KubeAPI, namespace: str, name: str, bundle: bytes, period: float = 300.0
) -> None:
    """publish_bundle every period seconds, until cancelled; failures are logged."""
    while True:
        await asyncio.sleep(period)
        try:
            await publish_bundle(api, namespace, name, bundle)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning(
                "cannot publish the CA bundle", configmap=f"{namespace}/{name}", error=repr(e)
            )
