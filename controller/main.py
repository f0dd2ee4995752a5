"""weir-controller: sources -> cluster state -> reduce -> versioned snapshots -> NodePlane.

Every task runs in one asyncio TaskGroup: the source, the publisher (debounce + reduce),
the gRPC server, and any EXTRA_TASKS. SIGTERM/SIGINT end the group: the server ends the
agent streams (agents reconnect to another replica) and gives unary calls a grace period.
A task that fails takes the process down with exit code 1 (the Deployment restarts it).

Leader election and leader-only work (IPAM, Service status) plug in as task factories:
append to EXTRA_TASKS (or pass extra_tasks to run()); each gets the Controller and runs
until cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc.experimental.aio import init_grpc_aio
from weir.common.logs import configure, get_logger
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.publish import Publisher
from weir.controller.core.reduce import ReduceConfig
from weir.controller.core.snapshots import DEFAULT_HISTORY, SnapshotStore
from weir.controller.core.state import ClusterState
from weir.controller.metrics import Metrics, serve_metrics
from weir.controller.plane.drain import Drainer, MemoryDrainer
from weir.controller.plane.server import ServerTLS, serve
from weir.controller.plane.servicer import NodePlane
from weir.controller.sources.base import Source

log = get_logger("weir.controller")

# One Maglev seed for the whole cluster: every node must build the same tables, across
# controller replicas and restarts. Change it only for all controllers at once.
DEFAULT_MAGLEV_SEED = 0x57E1_B0A7


@dataclass
class Controller:
    """What the tasks share."""

    args: argparse.Namespace
    state: ClusterState
    store: SnapshotStore
    plane: NodePlane
    publisher: Publisher
    metrics: Metrics


TaskFactory = Callable[[Controller], Coroutine[Any, Any, None]]
EXTRA_TASKS: list[TaskFactory] = []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weir-controller", description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=("file", "kubernetes"), default="file")
    p.add_argument("--manifests", type=Path, help="directory of manifests (--source file)")
    p.add_argument(
        "--kubeconfig",
        help="kubeconfig file (--source kubernetes; default: in-cluster, then ~/.kube/config)",
    )
    p.add_argument(
        "--secrets-namespace",
        default="weir-system",
        help="namespace of the Secrets holding BGP passwords (--source kubernetes)",
    )
    p.add_argument(
        "--default-class",
        action="store_true",
        help="also handle LoadBalancer Services without a loadBalancerClass",
    )
    p.add_argument("--listen", default="0.0.0.0:9443", help="NodePlane gRPC address")
    p.add_argument(
        "--debounce-ms",
        type=float,
        default=50.0,
        help="coalesce changes for this long before computing a version",
    )
    p.add_argument(
        "--maglev-seed",
        type=_seed,
        default=DEFAULT_MAGLEV_SEED,
        help="Maglev hash seed, the same for the whole cluster",
    )
    p.add_argument("--history", type=int, default=DEFAULT_HISTORY, help="versions kept for deltas")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--metrics-listen",
        default="",
        help="serve Prometheus metrics on host:port (off when empty)",
    )
    p.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds")
    tls = p.add_argument_group("TLS (agents must present a client certificate naming their node)")
    tls.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    tls.add_argument("--tls-client-ca", type=Path, help="CA that signs agent certificates")
    tls.add_argument(
        "--plaintext", action="store_true", help="serve without TLS (labs and tests only)"
    )
    tls.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="IDENTITY",
        help="client certificate identity (DNS SAN, else CN) allowed to call mutating RPCs "
        "(SetNodeDrain); repeatable. Any CA-signed certificate may inspect. Not checked "
        "with --plaintext",
    )
    from weir.controller.kube.wiring import add_flags as add_kubernetes_flags

    add_kubernetes_flags(p)
    return p


def _seed(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError("must fit in 32 bits")
    return value


def server_tls(args: argparse.Namespace) -> ServerTLS | None:
    """TLS settings from the flags; None only with an explicit --plaintext."""
    files = (args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.plaintext:
        if any(files):
            raise SystemExit("weir-controller: --plaintext and --tls-* are exclusive")
        return None
    if not all(files):
        raise SystemExit(
            "weir-controller: refusing to serve without TLS: pass --tls-cert, --tls-key and "
            "--tls-client-ca, or --plaintext explicitly"
        )
    for f in files:
        if not f.is_file():
            raise SystemExit(f"weir-controller: {f}: no such file")
    return ServerTLS(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)


async def make_source(args: argparse.Namespace) -> Source:
    if args.source == "file":
        from weir.controller.sources.files import FileSource

        return FileSource(args.manifests)
    try:
        from weir.controller.kube.api import KubeAPI, load_client
        from weir.controller.sources.kubernetes import KubernetesSource
    except ModuleNotFoundError as exc:
        if exc.name not in ("weir.controller.kube.api", "weir.controller.sources.kubernetes"):
            raise
        raise SystemExit(
            "weir-controller: the kubernetes source is not available in this build "
            f"({exc.name} is missing); use --source file"
        ) from None
    api = KubeAPI(await load_client(args.kubeconfig))
    return KubernetesSource(api, args.secrets_namespace)


def make_drainer(args: argparse.Namespace, source: Source, state: ClusterState) -> Drainer:
    """The Node annotation with the Kubernetes source, memory with the file source."""
    if args.source == "kubernetes":
        from weir.controller.kube.drain import AnnotationDrainer

        return AnnotationDrainer(source.api)  # type: ignore[attr-defined]
    return MemoryDrainer(state)


class _Stop(Exception):
    """Raised inside the task group to end it on a signal."""


async def run(args: argparse.Namespace, extra_tasks: Sequence[TaskFactory] = ()) -> int:
    # Keep grpc.aio initialized until the process exits: its shutdown inside asyncio.run()
    # can hang when many streams end at once (grpc/grpc#40989).
    init_grpc_aio()
    tls = server_tls(args)
    source = await make_source(args)
    if args.source == "kubernetes":  # IPAM and status writes on the Lease holder; probes
        from weir.controller.kube.wiring import kubernetes_tasks

        extra_tasks = (*extra_tasks, *kubernetes_tasks(args, source))
    metrics = Metrics()
    state = ClusterState()
    store = SnapshotStore(history=args.history)
    config = ReduceConfig(
        maglev_seed=args.maglev_seed,
        vips_from_annotation=args.source == "file",
        default_class=args.default_class,
    )
    publisher = Publisher(
        state,
        store,
        config,
        debounce=args.debounce_ms / 1000,
        metrics=metrics,
        required_kinds=ALL_KINDS,
    )
    plane = NodePlane(
        store,
        errors=publisher.errors,
        metrics=metrics,
        drainer=make_drainer(args, source, state),
        operators=args.operator,
    )
    ctl = Controller(args, state, store, plane, publisher, metrics)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_metrics = serve_metrics(metrics, args.metrics_listen) if args.metrics_listen else None
    log.info(
        "weir-controller starting",
        source=args.source,
        manifests=str(args.manifests or ""),
        listen=args.listen,
        tls=tls is not None,
        maglev_seed=args.maglev_seed,
        debounce_ms=args.debounce_ms,
    )
    code = 0
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(source.run(state), name="source")
            tg.create_task(publisher.run(), name="publisher")
            tg.create_task(serve(plane, args.listen, tls, grace=args.shutdown_grace), name="grpc")
            for factory in (*EXTRA_TASKS, *extra_tasks):
                tg.create_task(factory(ctl), name=getattr(factory, "__name__", "extra"))
            await stop.wait()
            log.info("shutting down")
            raise _Stop
    except* _Stop:
        pass
    except* Exception as group:
        for exc in group.exceptions:
            log.error("controller task failed", error=repr(exc), exc_info=exc)
        code = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if stop_metrics is not None:
            stop_metrics()
    log.info("weir-controller stopped", exit_code=code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.source == "file" and args.manifests is None:
        build_parser().error("--source file needs --manifests DIR")
    configure(args.log_format, args.log_level)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
