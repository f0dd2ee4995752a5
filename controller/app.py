"""weir-controller's parts, built from its flags, and the tasks they run.

    app = await ControllerApp.build(args)
    code = await run_until_stopped(log, app.tasks(), shutdown=app.close)

Always: the cluster state, the snapshot store, the publisher (debounce + reduce), the
NodePlane and its gRPC server, the metrics, and a source: the manifests directory, or the
Kubernetes API, which brings its own parts (controller/kube/wiring.py: IPAM and status writes
on the Lease holder, BGPPeer status, the Node-annotation drainer, the health port, the CA).

TLS: the serving certificate comes from --tls-cert/--tls-key, or, with the Kubernetes API and
none given, from the controller's own CA (renewed in memory; the CA published for agents in a
ConfigMap). Client certificates must chain to --tls-client-ca or to that CA.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.publish import Publisher
from weir.controller.core.reduce import ReduceConfig
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState
from weir.controller.kube.wiring import STATE_KINDS, KubernetesParts
from weir.controller.metrics import Metrics, serve_metrics
from weir.controller.plane.authority import Authority
from weir.controller.plane.drain import Drainer, MemoryDrainer
from weir.controller.plane.health import HealthTracker
from weir.controller.plane.server import Listeners, serve
from weir.controller.plane.servicer import NodePlane
from weir.controller.plane.tls import ManagedTLS, ServerTLS, ServingSource
from weir.controller.sources.base import Source
from weir.controller.sources.files import FileSource


@dataclass
class ControllerApp:
    args: argparse.Namespace
    tls: ServingSource | None
    metrics: Metrics
    state: ClusterState
    store: SnapshotStore
    publisher: Publisher
    plane: NodePlane
    health: HealthTracker
    source: Source
    kube: KubernetesParts | None  # with --source kubernetes

    @classmethod
    async def build(cls, args: argparse.Namespace) -> ControllerApp:
        kube = await KubernetesParts.connect(args) if args.source == "kubernetes" else None
        try:
            return await cls._build(args, kube)
        except BaseException:
            if kube is not None:
                await kube.close()
            raise

    @classmethod
    async def _build(cls, args: argparse.Namespace, kube: KubernetesParts | None) -> ControllerApp:
        authority = None
        if kube is not None and not args.plaintext:
            authority = await kube.authority()
        tls = _tls(args, authority)
        if kube is not None and authority is not None and isinstance(tls, ManagedTLS):
            await kube.publish(authority.cert_pem)
        metrics = Metrics()
        state = ClusterState(STATE_KINDS if kube else ALL_KINDS)
        store = SnapshotStore(history=args.history)
        config = ReduceConfig(
            maglev_seed=args.maglev_seed,
            vips_from_annotation=kube is None,  # no IPAM without the API: files give the VIPs
            default_class=args.default_class,
            lb_node_selector=args.lb_node_selector,
            encap_port=args.encap_port,
        )
        publisher = Publisher(
            state,
            store,
            config,
            debounce=args.debounce_ms / 1000,
            metrics=metrics,
            required_kinds=ALL_KINDS,
        )
        # Kubernetes: the Node annotation, seen by every replica; files: memory.
        drainer: Drainer = kube.drainer if kube else MemoryDrainer(state)
        served_ca = authority.cert_pem if isinstance(tls, ManagedTLS) and authority else b""
        health = HealthTracker(state, store, metrics)
        plane = NodePlane(
            store,
            errors=publisher.errors,
            metrics=metrics,
            drainer=drainer,
            operators=args.operator,
            certificates=(
                kube.certificates(authority, lambda: served_ca) if kube and authority else None
            ),
            status=kube.status(state) if kube else None,
            health=health.list_health,
        )
        source: Source = (
            kube.source if kube else FileSource(args.manifests, max_bytes=args.manifest_max_bytes)
        )
        return cls(args, tls, metrics, state, store, publisher, plane, health, source, kube)

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Every task, by name, for weir.common.lifecycle.run_until_stopped."""
        args = self.args
        tasks = {
            "source": self.source.run(self.state),
            "publisher": self.publisher.run(),
            # Not "health": the Kubernetes parts' probe port has that name.
            "health-decision": (
                self.health.run(self.plane)
                if self.kube is None
                else self.health.follow(
                    self.state, 3 * args.health_report_renew, args.lb_node_selector
                )
            ),
            "grpc": serve(self.plane, self.listeners(), self.tls, grace=args.shutdown_grace),
        }
        if args.metrics_listen:
            tasks["metrics"] = serve_metrics(self.metrics, args.metrics_listen)
        if self.kube is not None:
            tasks.update(
                self.kube.tasks(self.state, self.store, self.publisher, self.plane, self.health)
            )
        return tasks

    def listeners(self) -> Listeners:
        args = self.args
        return Listeners(args.listen, args.bootstrap_listen, args.local_socket)

    async def close(self) -> None:
        """After every task ended."""
        if self.kube is not None:
            await self.kube.close()


def _tls(args: argparse.Namespace, authority: Authority | None) -> ServingSource | None:
    """The serving certificate's source (None: --plaintext); see the module docstring."""
    if args.plaintext:
        return None
    if args.tls_cert is not None:
        extra = authority.cert_pem if authority is not None else b""
        return ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca, extra_roots=extra)
    assert authority is not None  # main.check_tls_flags: no files means the Kubernetes API
    return ManagedTLS(
        authority,
        [n.strip() for n in args.serving_names.split(",") if n.strip()],
        validity=datetime.timedelta(seconds=args.serving_validity),
        client_ca=args.tls_client_ca,
    )
