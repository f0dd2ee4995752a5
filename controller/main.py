"""weir-controller: sources -> cluster state -> reduce -> versioned snapshots -> NodePlane.

The parts (controller/app.py) run as tasks of one TaskGroup (weir.common.lifecycle).
SIGTERM/SIGINT end the group: the server ends the agent streams (agents reconnect to another
replica) and gives unary calls a grace period. A task that fails takes the process down with
exit code 1 (the Deployment restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import threading
from pathlib import Path

from grpc.experimental.aio import init_grpc_aio, shutdown_grpc_aio
from weir.common.lifecycle import run_until_stopped
from weir.common.logs import configure, get_logger
from weir.common.version import VERSION
from weir.controller.app import ControllerApp
from weir.controller.core.nodeconfig import DEFAULT_ENCAP_PORT, DEFAULT_LB_NODE_SELECTOR
from weir.controller.core.parsing import ParseError
from weir.controller.core.selectors import LabelSelector, parse_selector_string
from weir.controller.core.snapshots import DEFAULT_HISTORY
from weir.controller.kube.wiring import add_flags as add_kubernetes_flags
from weir.controller.sources.manifest import DEFAULT_MAX_BYTES

log = get_logger("weir.controller")

# One Maglev seed for the whole cluster: every node must build the same tables, across
# controller replicas and restarts. Change it only for all controllers at once.
DEFAULT_MAGLEV_SEED = 0x57E1_B0A7


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weir-controller", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"weir-controller {VERSION}")
    p.add_argument("--source", choices=("file", "kubernetes"), default="file")
    p.add_argument("--manifests", type=Path, help="directory of manifests (--source file)")
    p.add_argument(
        "--manifest-max-bytes",
        type=_positive,
        default=DEFAULT_MAX_BYTES,
        help="larger manifest files are not read but reported as errors (--source file)",
    )
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
        "--bootstrap-listen",
        default="",
        help="address of the bootstrap port, where agents trade a ServiceAccount token for a "
        "node certificate (TLS without client certificates; --agent-token-audience)",
    )
    p.add_argument(
        "--local-socket",
        type=Path,
        help="also serve on this Unix socket (mode 0600), for weirctl inside the Pod",
    )
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
    p.add_argument(
        "--lb-node-selector",
        type=_selector,
        default=DEFAULT_LB_NODE_SELECTOR,
        help="label selector of the load-balancer nodes, in kubectl's syntax "
        f"(default {DEFAULT_LB_NODE_SELECTOR}; empty: every Node); the other nodes' views "
        "carry no services (docs/FORWARDING.md)",
    )
    p.add_argument(
        "--encap-port",
        type=_port,
        default=DEFAULT_ENCAP_PORT,
        help="UDP port of the encapsulation to backends' nodes, the same for the whole cluster",
    )
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--metrics-listen",
        default="",
        help="serve Prometheus metrics on host:port (off when empty)",
    )
    p.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds")
    tls = p.add_argument_group(
        "TLS (agents must present a client certificate naming their node; with the "
        "Kubernetes API and no --tls-cert, the controller makes its own)"
    )
    tls.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        help="CA that signs hand-placed agent and operator certificates (the controller's own "
        "CA signs the agents' token-issued ones)",
    )
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
    add_kubernetes_flags(p)
    return p


def _selector(text: str) -> LabelSelector:
    try:
        return parse_selector_string(text)
    except ParseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    value = int(text, 10)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number, 1 to 65535")
    return value


def _positive(text: str) -> int:
    value = int(text, 0)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seed(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError("must fit in 32 bits")
    return value


def check_tls_flags(args: argparse.Namespace) -> None:
    """Exit on flags that do not make one TLS setup (app.py builds it)."""
    files = (args.tls_cert, args.tls_key, args.tls_client_ca)
    kubernetes = args.source == "kubernetes"
    if args.plaintext:
        if any(files):
            raise SystemExit("weir-controller: --plaintext and --tls-* are exclusive")
        if args.agent_token_audience or args.bootstrap_listen:
            raise SystemExit("weir-controller: node certificates for tokens need TLS")
        return
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("weir-controller: --tls-cert and --tls-key go together")
    if args.tls_cert is None and not kubernetes:
        raise SystemExit(
            "weir-controller: refusing to serve without TLS: pass --tls-cert, --tls-key and "
            "--tls-client-ca, or --plaintext explicitly (with --source kubernetes the "
            "controller makes its own certificates)"
        )
    if args.tls_cert is not None and args.tls_client_ca is None and not kubernetes:
        raise SystemExit("weir-controller: --tls-client-ca is needed to accept agents")
    if args.agent_token_audience and not (kubernetes and args.bootstrap_listen):
        raise SystemExit(
            "weir-controller: --agent-token-audience needs --source kubernetes (TokenReview) "
            "and --bootstrap-listen"
        )
    if args.bootstrap_listen and not args.agent_token_audience:
        raise SystemExit("weir-controller: --bootstrap-listen needs --agent-token-audience")
    for f in files:
        if f is not None and not f.is_file():
            raise SystemExit(f"weir-controller: {f}: no such file")


async def run(args: argparse.Namespace) -> int:
    # Keep grpc.aio initialized until the process exits: its shutdown inside asyncio.run()
    # can hang when many streams end at once (grpc/grpc#40989).
    init_grpc_aio()
    check_tls_flags(args)
    app = await ControllerApp.build(args)
    log.info(
        "weir-controller starting",
        version=VERSION,
        source=args.source,
        manifests=str(args.manifests or ""),
        listen=args.listen,
        tls=app.tls is not None,
        maglev_seed=args.maglev_seed,
        debounce_ms=args.debounce_ms,
    )
    code = await run_until_stopped(log, app.tasks(), shutdown=app.close)
    log.info("weir-controller stopped", exit_code=code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.source == "file" and args.manifests is None:
        build_parser().error("--source file needs --manifests DIR")
    configure(args.log_format, args.log_level)
    try:
        return asyncio.run(run(args))
    finally:
        release_grpc_aio()


def release_grpc_aio(bound: float = 2.0) -> None:
    """Undo run()'s init_grpc_aio once the loop is closed, so that the process exits at once:
    while gRPC stays initialized, its OpenSSL exit handler (any process that used TLS) waits
    2 s for it to shut down (grpc/grpc#39297). The app's gRPC objects sit in reference cycles
    that would keep it initialized too: collected first. The shutdown joins gRPC's poller
    thread, hence a bounded wait in a thread of its own (no worse than the 2 s if it hangs)."""
    gc.collect()
    shutdown = threading.Thread(target=shutdown_grpc_aio, name="grpc-aio-shutdown", daemon=True)
    shutdown.start()
    shutdown.join(bound)


if __name__ == "__main__":
    sys.exit(main())
