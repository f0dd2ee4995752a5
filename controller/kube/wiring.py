"""The Kubernetes-only parts of weir-controller: their flags, and KubernetesParts, which builds
them and the tasks they run.

Every replica watches (the source feeds the cluster state, which the allocator reads too),
serves the NodePlane and writes the BGPPeer status entries of the agents connected to it
(controller/kube/peerstatus.py); only the Lease holder (or every replica, without
--leader-elect) runs the allocator, which writes Service status, Events and pool status, and
removes the BGPPeer status entries of gone replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Coroutine
from typing import Any

from weir.common.logs import get_logger
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState
from weir.controller.kube.allocator import WATCHED_KINDS, Allocator
from weir.controller.kube.api import KubeAPI, load_client
from weir.controller.kube.drain import AnnotationDrainer
from weir.controller.kube.leader import LeaderElector, LeaseConfig, default_identity
from weir.controller.kube.peerstatus import PeerStatusWriter
from weir.controller.plane.healthport import serve_health
from weir.controller.plane.servicer import NodePlane
from weir.controller.sources.kubernetes import KubernetesSource

log = get_logger("weir.controller")

# What the cluster state keeps with this source: the snapshot's kinds and the allocator's.
STATE_KINDS = ALL_KINDS | WATCHED_KINDS


def add_flags(parser: argparse.ArgumentParser) -> None:
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
        default=os.environ.get("POD_NAMESPACE") or "weir-system",
        help="default: $POD_NAMESPACE, else weir-system",
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
        type=float,
        default=30.0,
        help="seconds between renewals of this replica's BGPPeer status entries; the leader "
        "removes other replicas' entries older than 3 times this",
    )
    g.add_argument(
        "--watch-quiet-timeout",
        type=float,
        default=120.0,
        help="seconds without any event or bookmark after which a watch is taken for dead "
        "and its kind relisted (the API server sends a bookmark about every minute)",
    )
    g.add_argument(
        "--health-listen",
        default="",
        help="plaintext grpc.health.v1 for the kubelet's probes on host:port (off when empty): "
        'service "liveness", and "" ready once the first snapshot is published',
    )


class KubernetesParts:
    """The API client (owned: close() closes it), the source, the Node-annotation drainer,
    and tasks() for the rest."""

    def __init__(self, args: argparse.Namespace, api: KubeAPI) -> None:
        self.args = args
        self.api = api
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
            return cls(args, api)
        except BaseException:  # bad flags (SystemExit): the client must not leak
            await api.client.close()
            raise

    def tasks(
        self, state: ClusterState, store: SnapshotStore, plane: NodePlane
    ) -> dict[str, Coroutine[Any, Any, None]]:
        """By name: the BGPPeer status writer, the allocator under leader election, and the
        health port. state must keep STATE_KINDS."""
        allocator = Allocator(
            self.api,
            state,
            default_class=self.args.default_class,
            instance=self.identity,
            fence=lambda: self.source.resync(WATCHED_KINDS),
            on_pools=plane.metrics.set_pools,
        )
        peer_status = PeerStatusWriter(
            self.api, plane, state, reporter=self.identity, refresh=self.args.peer_status_refresh
        )

        async def lead() -> None:
            plane.metrics.leader.set(1)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(allocator.run(), name="allocator")
                    tg.create_task(peer_status.collect_garbage(), name="bgppeer-status-gc")
            finally:
                plane.metrics.leader.set(0)

        # Every replica writes the status of its own agents: they are connected to it only.
        tasks: dict[str, Coroutine[Any, Any, None]] = {"bgppeer-status": peer_status.run()}
        if self.lease is None:
            log.info("no leader election: this replica allocates")
            tasks["lead"] = lead()
        else:
            tasks["elector"] = LeaderElector(self.api, self.lease).run(lead)
        if self.args.health_listen:
            tasks["health"] = serve_health(self.args.health_listen, store)
        return tasks

    async def close(self) -> None:
        """Once every task ended (the Lease is released by then)."""
        await self.api.client.close()
