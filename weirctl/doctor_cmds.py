"""weirctl doctor: on a node (or in its agent's Pod), what the agent needs and whether it is
there: kernel, headers for bcc, BTF, bpffs, the uplink's XDP, capabilities
(weir.nodeagent.preflight), and whether the controller answers; each failed check with its
fix. Exit status 1 when a required check fails.

    kubectl -n weir-system exec ds/weir-agent -- weirctl doctor

Its defaults come from the agent's environment in the DaemonSet (WEIR_CONTROLLER,
WEIR_INTERFACE, WEIR_BPFFS, WEIR_TLS_CA, WEIR_TLS_SERVER_NAME), so inside the agent's Pod it
checks what the agent uses.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from weir.ctl.controller_cmds import table
from weir.nodeagent.identity import bootstrap_target
from weir.nodeagent.preflight import Check, local_checks

TIMEOUT = 5.0


def register(sub: argparse._SubParsersAction) -> None:
    env = os.environ.get
    p = sub.add_parser("doctor", help="check this node for the agent: kernel, bpffs, XDP, ...")
    p.add_argument("--interface", default=env("WEIR_INTERFACE", "eth0"), help="the uplink")
    p.add_argument(
        "--bpffs", type=Path, default=Path(env("WEIR_BPFFS", "/sys/fs/bpf/weir")), help="pins"
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=env("WEIR_TLS_CA") or None,
        help="CA bundle of the controller's certificate (none: plaintext)",
    )
    p.add_argument("--tls-server-name", default=env("WEIR_TLS_SERVER_NAME") or None)
    p.add_argument(
        "--tls-cert", type=Path, help="a client certificate, to check the port agents use"
    )
    p.add_argument("--tls-key", type=Path)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=doctor_cmd)


def controller_check(args: argparse.Namespace) -> Check:
    """The controller answers grpc.health.v1 (on its bootstrap port when only a CA is given:
    that one needs no client certificate)."""
    target = args.controller
    options = (
        [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    )
    if args.tls_ca is None:
        channel = grpc.insecure_channel(target)
    else:
        key = args.tls_key.read_bytes() if args.tls_key else None
        cert = args.tls_cert.read_bytes() if args.tls_cert else None
        if cert is None:
            target = bootstrap_target(args.controller)
        creds = grpc.ssl_channel_credentials(args.tls_ca.read_bytes(), key, cert)
        channel = grpc.secure_channel(target, creds, options)
    try:
        with channel:
            # The typing stubs of grpc_health leave out the stub's methods.
            answer = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            )
    except grpc.RpcError as e:
        return Check(
            "controller",
            False,
            f"{target}: {e.code().name}: {e.details()}",
            "check that the controller runs (kubectl -n weir-system get pods), that this node "
            "reaches its Service, and that --tls-ca is the bundle of weir-ca-bundle",
        )
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    return Check(
        "controller",
        serving,
        f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}",
        "" if serving else "the controller has not loaded the cluster yet: see its logs",
    )


def doctor_cmd(args: argparse.Namespace) -> int:
    checks = [*local_checks(args.interface, args.bpffs), controller_check(args)]
    if args.output == "json":
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        rows = [
            (
                c.name,
                "ok" if c.ok else ("MISSING" if c.required else "absent"),
                c.found,
                c.fix or "-",
            )
            for c in checks
        ]
        print(table(("CHECK", "STATUS", "FOUND", "FIX"), rows))
    return 0 if all(c.ok or not c.required for c in checks) else 1
