"""The Kubernetes-only parts of weir-controller: their flags, and KubernetesParts, which builds
them and the tasks they run.

Every replica watches (the source feeds the cluster state, which the allocator reads too),
serves the NodePlane and writes the BGPPeer status entries of the agents connected to it
(controller/kube/peerstatus.py); only the Lease holder (or every replica, without
--leader-elect) runs the allocator, which writes Service status, Events and pool status,
writes the health checks' Service conditions and Events (controller/kube/healthstatus.py),
removes the BGPPeer status entries of gone replicas, and writes the BGPAdvertisement
condition (controller/kube/adstatus.py).

At start: the API server must be a Kubernetes Weir supports (controller/kube/status.py).
With the API come the controller's own CA (a Secret, controller/kube/pki.py), which signs
its serving certificates when none is given and, with --agent-token-audience, the node
certificates agents get for their ServiceAccount tokens (controller/kube/tokenreview.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.publish import Publisher
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState
from weir.controller.kube.adstatus import AdvertisementStatusWriter
from weir.controller.kube.allocator import WATCHED_KINDS, Allocator
from weir.controller.kube.api import KubeAPI, load_client
from weir.controller.kube.drain import AnnotationDrainer
from weir.controller.kube.events import EventRecorder
from weir.controller.kube.healthpublish import HealthReportWriter
from weir.controller.kube.healthstatus import HealthStatusWriter
from weir.controller.kube.leader import LeaderElector, LeaseConfig, default_identity
from weir.controller.kube.peerstatus import PeerStatusWriter
from weir.controller.kube.pki import keep_bundle, load_authority, publish_bundle
from weir.controller.kube.status import check_kubernetes, pool_usage, replicas
from weir.controller.kube.tokenreview import TokenReviewer
from weir.controller.plane.authority import Authority
from weir.controller.plane.health import HealthTracker
from weir.controller.plane.healthport import serve_health
from weir.controller.plane.identity import NodeCertificates
from weir.controller.plane.servicer import NodePlane
from weir.controller.sources.kubernetes import KubernetesSource

log = get_logger("weir.controller")

# What the cluster state keeps with this source: the snapshot's kinds and the allocator's.
STATE_KINDS = ALL_KINDS | WATCHED_KINDS


def add_flags(parser: argparse.ArgumentParser) -> None:
    namespace = os.environ.get("POD_NAMESPACE") or "weir-system"
    g = parser.add_argument_group("Kubernetes: leader election and probes (--source kubernetes)")
    g.add_argument(
        "--leader-elect",
        action="store_true",
        help="only the holder of a Lease allocates addresses and writes status (run this with "
        "more than one replica); without it this replica always does",
    )
    g.add_argument("--lease-name", default="weir-controller")
    g.add_argument(
        "--lease-namespace",
        default=namespace,
        help="the controller's namespace: its Lease, CA Secret, CA bundle ConfigMap and "
        "Deployment (default: $POD_NAMESPACE, else weir-system)",
    )
    g.add_argument("--lease-duration", type=float, default=15.0, help="seconds")
    g.add_argument("--renew-deadline", type=float, default=10.0, help="seconds")
    g.add_argument("--retry-period", type=float, default=2.0, help="seconds")
    g.add_argument(
        "--identity",
        default="",
        help="this replica's name in the Lease (default: $POD_NAME or the host name, with a "
        "random suffix)",
    )
    g.add_argument(
        "--peer-status-refresh",
        type=_renewal,
        default=30.0,
        help="seconds between renewals of this replica's BGPPeer status entries (1 to 3600); "
        "the leader removes other replicas' entries not renewed for 3 times this",
    )
    g.add_argument(
        "--health-report-renew",
        type=_renewal,
        default=10.0,
        help="seconds between renewals of the health reports this replica publishes on its "
        "agents' Nodes (1 to 3600); every replica counts a report for 3 times this after it "
        "saw it renewed",
    )
    g.add_argument(
        "--watch-quiet-timeout",
        type=float,
        default=120.0,
        help="seconds without any event or bookmark after which a watch is taken for dead "
        "and its kind relisted (the API server sends a bookmark about every minute)",
    )
    g.add_argument(
        "--deployment",
        default="",
        help="the controller's Deployment: weirctl status shows its replicas ('' for none)",
    )
    g.add_argument(
        "--health-listen",
        default="",
        help="plaintext grpc.health.v1 for the kubelet's probes on host:port (off when empty): "
        'service "liveness", and "" ready once the first snapshot is published',
    )

    pki = parser.add_argument_group(
        "Kubernetes: node identity and the controller's certificates (--source kubernetes)"
    )
    pki.add_argument(
        "--agent-token-audience",
        default="",
        help="agents trade a projected ServiceAccount token of this audience for a node "
        "certificate on --bootstrap-listen (off when empty)",
    )
    pki.add_argument(
        "--agent-service-account",
        default=f"{namespace}/weir-agent",
        help="NAMESPACE/NAME of the agents' ServiceAccount: only its tokens are taken",
    )
    pki.add_argument(
        "--agent-cert-validity",
        type=float,
        default=12 * 3600.0,
        help="seconds a node certificate lasts (agents renew it after half to four fifths)",
    )
    pki.add_argument(
        "--ca-secret",
        default="weir-controller-ca",
        help="Secret holding the controller's CA (made when missing)",
    )
    pki.add_argument(
        "--ca-bundle-configmap",
        default="weir-ca-bundle",
        help="ConfigMap where the CA is published (key ca.crt) for the agents to trust, "
        "when the controller makes its own serving certificate",
    )
    pki.add_argument(
        "--serving-names",
        default=f"weir-controller.{namespace}.svc,weir-controller.{namespace}.svc.cluster.local",
        help="comma-separated DNS names of the serving certificate the controller makes when "
        "no --tls-cert is given",
    )
    pki.add_argument(
        "--serving-validity",
        type=float,
        default=7 * 86400.0,
        help="seconds a serving certificate the controller makes lasts (renewed at two thirds)",
    )


def _renewal(text: str) -> float:
    # Readers see a renewal as a change of what was written (a health report's `renewed`,
    # a BGPPeer entry's observedTime), in whole seconds: renewals less than a second apart
    # could leave it unchanged.
    value = float(text)
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be 1 to 3600 (seconds)")
    return value


def account(text: str) -> tuple[str, str]:
    """NAMESPACE/NAME of a ServiceAccount."""
    namespace, _, name = text.partition("/")
    if not namespace or not name:
        raise SystemExit(f"weir-controller: --agent-service-account {text!r} is not NAMESPACE/NAME")
    return namespace, name


class KubernetesParts:
    """The API client (owned: close() closes it), the source, the Node-annotation drainer,
    the CA, and tasks() for the rest."""

    def __init__(self, args: argparse.Namespace, api: KubeAPI, kubernetes_version: str) -> None:
        self.args = args
        self.api = api
        self.kubernetes_version = kubernetes_version
        self.elector: LeaderElector | None = None
        self.bundle: bytes | None = None  # published in the ConfigMap (and kept so)
        self.source = KubernetesSource(
            api, args.secrets_namespace, quiet_after=args.watch_quiet_timeout
        )
        self.drainer = AnnotationDrainer(api)
        self.identity = args.identity or default_identity()
        self.lease: LeaseConfig | None = None
        if args.leader_elect:
            try:
                self.lease = LeaseConfig(
                    namespace=args.lease_namespace,
                    name=args.lease_name,
                    identity=self.identity,
                    lease_duration=args.lease_duration,
                    renew_deadline=args.renew_deadline,
                    retry_period=args.retry_period,
                )
            except ValueError as e:
                raise SystemExit(f"weir-controller: {e}") from None

    @classmethod
    async def connect(cls, args: argparse.Namespace) -> KubernetesParts:
        api = KubeAPI(await load_client(args.kubeconfig))
        try:
            return cls(args, api, await check_kubernetes(api))
        except BaseException:  # bad flags, an old API server (SystemExit): no leak
            await api.client.close()
            raise

    async def authority(self) -> Authority:
        """The controller's CA, from its Secret (made when missing)."""
        return await load_authority(self.api, self.args.lease_namespace, self.args.ca_secret)

    async def publish(self, bundle: bytes) -> None:
        """Publish the CA bundle agents trust now, and keep it published (tasks())."""
        await publish_bundle(
            self.api, self.args.lease_namespace, self.args.ca_bundle_configmap, bundle
        )
        self.bundle = bundle

    def certificates(
        self, authority: Authority, ca_bundle: Callable[[], bytes]
    ) -> NodeCertificates | None:
        """Node certificates for tokens, with --agent-token-audience."""
        if not self.args.agent_token_audience:
            return None
        reviewer = TokenReviewer(
            self.api,
            audience=self.args.agent_token_audience,
            account=account(self.args.agent_service_account),
        )
        return NodeCertificates(
            authority,
            reviewer,
            validity=datetime.timedelta(seconds=self.args.agent_cert_validity),
            ca_bundle=ca_bundle,
        )

    def status(self, state: ClusterState) -> Callable[[], Awaitable[pb.ControllerStatus]]:
        """The GetControllerStatus answer's Kubernetes part."""

        async def status() -> pb.ControllerStatus:
            out = pb.ControllerStatus(
                source="kubernetes",
                identity=self.identity,
                leader_election=self.elector is not None,
                leader=self.elector.holder if self.elector else self.identity,
                kubernetes_version=self.kubernetes_version,
                pools=pool_usage(state.inputs().pools.values()),
            )
            if self.args.deployment:
                out.replicas.CopyFrom(
                    await replicas(self.api, self.args.lease_namespace, self.args.deployment)
                )
            return out

        return status

    def tasks(
        self,
        state: ClusterState,
        store: SnapshotStore,
        publisher: Publisher,
        plane: NodePlane,
        health: HealthTracker,
    ) -> dict[str, Coroutine[Any, Any, None]]:
        """By name: the BGPPeer status writer and the health report writer (every replica);
        the allocator, the health checks' Service status writer, the BGPAdvertisement status
        writer and the removal of stale BGPPeer entries and health reports under leader
        election; and the health port. state must keep STATE_KINDS."""
        events = EventRecorder(self.api, self.identity)  # one spam filter for every writer
        allocator = Allocator(
            self.api,
            state,
            default_class=self.args.default_class,
            events=events,
            fence=lambda: self.source.resync(WATCHED_KINDS),
            on_pools=plane.metrics.set_pools,
        )
        health_status = HealthStatusWriter(self.api, state, health, events)
        peer_status = PeerStatusWriter(
            self.api, plane, state, reporter=self.identity, refresh=self.args.peer_status_refresh
        )
        ad_status = AdvertisementStatusWriter(self.api, state, publisher, plane)
        reports = HealthReportWriter(
            self.api, plane, replica=self.identity, renew=self.args.health_report_renew
        )

        async def lead() -> None:
            plane.metrics.leader.set(1)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(allocator.run(), name="allocator")
                    tg.create_task(health_status.run(), name="health-status")
                    tg.create_task(peer_status.collect_garbage(), name="bgppeer-status-gc")
                    tg.create_task(reports.collect_garbage(state), name="health-report-gc")
                    tg.create_task(ad_status.run(), name="bgpadvertisement-status")
            finally:
                plane.metrics.leader.set(0)

        # Every replica writes the status and health reports of its own agents: they are
        # connected to it only.
        tasks: dict[str, Coroutine[Any, Any, None]] = {
            "bgppeer-status": peer_status.run(),
            "health-reports": reports.run(),
        }
        if self.lease is None:
            log.info("no leader election: this replica allocates")
            tasks["lead"] = lead()
        else:
            self.elector = LeaderElector(self.api, self.lease)
            tasks["elector"] = self.elector.run(lead)
        if self.bundle is not None:
            args = self.args
            tasks["ca-bundle"] = keep_bundle(
                self.api, args.lease_namespace, args.ca_bundle_configmap, self.bundle
            )
        if self.args.health_listen:
            tasks["health"] = serve_health(self.args.health_listen, store)
        return tasks

    async def close(self) -> None:
        """Once every task ended (the Lease is released by then)."""
        await self.api.client.close()
