"""What weirctl status learns from the API: the Kubernetes version (and whether Weir supports
it), the controller's Deployment replicas, and the pools' usage as the leader wrote it.

The oldest Kubernetes Weir supports is enforced at start (docs/LIMITS.md says why 1.24):
`check_kubernetes(api)` exits with a clear message on an older API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.crds import IPPool
from weir.controller.kube.api import ApiError, KubeAPI, Resource

log = get_logger("weir.controller")

OLDEST_KUBERNETES = (1, 24)
DEPLOYMENTS = Resource("Deployment", "apps", "v1", "deployments", True)


def parse_kubernetes_version(doc: dict[str, Any]) -> tuple[int, int]:
    """(major, minor) of a /version answer; providers add suffixes ("24+", "-eks")."""
    numbers = []
    for key in ("major", "minor"):
        found = re.match(r"\d+", str(doc.get(key, "")))
        if found is None:
            raise ValueError(f"the API server's /version has no number in {key}: {doc!r:.200}")
        numbers.append(int(found[0]))
    return numbers[0], numbers[1]


async def check_kubernetes(api: KubeAPI) -> str:
    """The API server's git version; SystemExit when it is older than Weir supports."""
    doc = await api.request("GET", "/version")
    found = parse_kubernetes_version(doc)
    version = str(doc.get("gitVersion") or "v{}.{}".format(*found))
    if found < OLDEST_KUBERNETES:
        raise SystemExit(
            f"weir-controller: Kubernetes {version} is not supported: the oldest Weir supports is "
            "{}.{} (Services' loadBalancerClass, EndpointSlice conditions; docs/LIMITS.md)".format(
                *OLDEST_KUBERNETES
            )
        )
    log.info("Kubernetes API server", version=version)
    return version


async def replicas(api: KubeAPI, namespace: str, name: str) -> pb.ControllerReplicas:
    """The Deployment's replica counts (known=False when it cannot be read)."""
    try:
        dep = await api.get(DEPLOYMENTS, namespace, name)
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
        log.debug("cannot read the controller's Deployment", error=repr(e))
        return pb.ControllerReplicas()
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    return pb.ControllerReplicas(
        known=True,
        desired=int(spec.get("replicas", 1) or 0),
        ready=int(status.get("readyReplicas", 0) or 0),
        updated=int(status.get("updatedReplicas", 0) or 0),
    )


def pool_usage(pools: Iterable[IPPool]) -> list[pb.PoolUsage]:
    """Each pool's counts and true conditions, from the status the leader wrote."""
    out = []
    for pool in sorted(pools, key=lambda p: p.name):
        status = pool.status
        conditions = [
            f"{c.get('type')}: {c.get('message', '')}"
            for c in status.get("conditions") or []
            if isinstance(c, dict) and c.get("status") == "True"
        ]
        available = sum(int(status.get(k, 0) or 0) for k in ("availableIPv4", "availableIPv6"))
        out.append(
            pb.PoolUsage(
                name=pool.name,
                assigned=int(status.get("assigned", 0) or 0),
                available=available,
                conditions=conditions,
            )
        )
    return out
