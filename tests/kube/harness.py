"""An in-process Kubernetes-side controller for tests: source, state and allocator, wired as
weir-controller wires them (controller/kube/wiring.py), against the fake API server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from weir.controller.core.state import ClusterState
from weir.controller.kube.allocator import WATCHED_KINDS, Allocator
from weir.controller.kube.api import KubeAPI
from weir.controller.kube.wiring import STATE_KINDS
from weir.controller.sources.kubernetes import KubernetesSource

from .conftest import NAMESPACE
from .fakeapi import FakeKubeAPI


class Harness:
    def __init__(self, kube: KubeAPI, *, default_class: bool = False) -> None:
        self.kube = kube
        self.default_class = default_class
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.state = ClusterState(STATE_KINDS)
        self.source = KubernetesSource(self.kube, NAMESPACE, backoff_base=0.05, backoff_cap=0.3)
        self.allocator = Allocator(
            self.kube,
            self.state,
            default_class=self.default_class,
            instance="test",
            fence=lambda: self.source.resync(WATCHED_KINDS),
            debounce=0.01,
            retry=0.2,
        )
        self.tasks = [
            asyncio.create_task(self.source.run(self.state)),
            asyncio.create_task(self.allocator.run()),
        ]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.tasks = []


def ingress(fake: FakeKubeAPI, name: str, ns: str = "default") -> list[str]:
    obj = fake.get("v1", "Service", ns, name) or {}
    return [
        i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ]


def condition(
    fake: FakeKubeAPI, name: str, ns: str = "default", ctype: str = "weir.dev/IPAllocated"
) -> dict[str, Any] | None:
    """The Service's condition of this type, if any."""
    obj = fake.get("v1", "Service", ns, name) or {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c
    return None


def accepted(fake: FakeKubeAPI, name: str) -> dict[str, Any]:
    """The condition Accepted of a BGPAdvertisement ({} when it has none)."""
    obj = fake.get("weir.dev/v1alpha1", "BGPAdvertisement", "", name) or {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Accepted":
            return c
    return {}


def advertisement_writes(fake: FakeKubeAPI, name: str = "") -> int:
    """Status writes of BGPAdvertisements (of the one named) the API server took."""
    match = {"name": name} if name else {}
    calls = fake.calls(verb="patch", resource="bgpadvertisements", subresource="status", **match)
    return len([r for r in calls if r.code == 200])


def events(fake: FakeKubeAPI, name: str, ns: str = "default") -> list[tuple[str, str, str]]:
    return [
        (e["type"], e["reason"], e["message"])
        for e in fake.list("v1", "Event", ns)
        if e["involvedObject"]["name"] == name
    ]
