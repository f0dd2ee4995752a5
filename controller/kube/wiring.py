"""The Kubernetes-only parts of weir-controller: their flags, and the task that runs the
allocator on the elected leader (or always, without --leader-elect).

Every replica watches (the source feeds the allocator's view next to the cluster state) and
serves the NodePlane and writes the BGPPeer status entries of the agents connected to it
(controller/kube/peerstatus.py); only the Lease holder writes Service status, Events and pool
status, and removes the BGPPeer status entries of gone replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from weir.common.logs import get_logger
from weir.controller.kube.allocator import WATCHED_KINDS, Allocator, AllocatorView
from weir.controller.kube.leader import LeaderElector, LeaseConfig, default_identity
from weir.controller.kube.peerstatus import PeerStatusWriter
from weir.controller.plane.healthport import serve_health
from weir.controller.sources.kubernetes import FanOutSink, KubernetesSource

log = get_logger("weir.controller")


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
        "--health-listen",
        default="",
        help="plaintext grpc.health.v1 for the kubelet's probes on host:port (off when empty): "
        'service "liveness", and "" ready once the first snapshot is published',
    )


TaskFactory = Callable[[Any], Coroutine[Any, Any, None]]


def kubernetes_tasks(args: argparse.Namespace, source: KubernetesSource) -> list[TaskFactory]:
    """controller.main task factories; call before the source runs (it adds the view)."""
    tasks = [leader_task(args, source)]
    if args.health_listen:

        async def health_port(ctl: Any) -> None:
            await serve_health(args.health_listen, ctl.store)

        tasks.append(health_port)
    return tasks


def leader_task(args: argparse.Namespace, source: KubernetesSource) -> TaskFactory:
    """Leader election running the allocator (or the allocator alone without election)."""
    view = AllocatorView()
    source.observers.append(view)
    identity = args.identity or default_identity()
    lease = None
    if args.leader_elect:
        try:
            lease = LeaseConfig(
                namespace=args.lease_namespace,
                name=args.lease_name,
                identity=identity,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
        except ValueError as e:
            raise SystemExit(f"weir-controller: {e}") from None

    async def kubernetes_leader(ctl: Any) -> None:
        allocator = Allocator(
            source.api,
            ctl.state,
            view,
            FanOutSink(ctl.state, view),
            default_class=args.default_class,
            instance=identity,
            fence=lambda: source.resync(WATCHED_KINDS),
        )
        peer_status = PeerStatusWriter(
            source.api, ctl.plane, ctl.state, reporter=identity, refresh=args.peer_status_refresh
        )

        async def lead() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(allocator.run(), name="allocator")
                tg.create_task(peer_status.collect_garbage(), name="bgppeer-status-gc")

        try:
            async with asyncio.TaskGroup() as tg:
                # Every replica: its agents are connected to it only.
                tg.create_task(peer_status.run(), name="bgppeer-status")
                if lease is None:
                    log.info("no leader election: this replica allocates")
                    tg.create_task(lead(), name="lead")
                else:
                    tg.create_task(LeaderElector(source.api, lease).run(lead), name="elector")
        finally:
            # Only at shutdown (or when the controller fails anyway), after the Lease was
            # released: the API client goes with the process.
            await source.api.client.close()

    return kubernetes_leader
