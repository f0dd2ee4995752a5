"""The gRPC channel to the controller for weirctl's commands: plaintext unless --ca is given;
with --ca, also --cert/--key (the controller requires a client certificate signed by its
client CA)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from weir.common.pb import pb_grpc


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--ca", type=Path, help="CA of the controller's certificate (enables TLS)")
    tls.add_argument("--cert", type=Path, help="client certificate")
    tls.add_argument("--key", type=Path, help="client key")
    tls.add_argument("--server-name", help="name to expect in the controller's certificate")


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    if args.ca is None:
        return grpc.insecure_channel(args.controller, options)
    creds = grpc.ssl_channel_credentials(
        args.ca.read_bytes(),
        args.key.read_bytes() if args.key else None,
        args.cert.read_bytes() if args.cert else None,
    )
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.controller, creds, options)


def call(args: argparse.Namespace, fn: Callable[[pb_grpc.NodePlaneStub], Any]) -> Any:
    """fn(stub) on a fresh channel; None (the error printed) when the RPC fails."""
    with open_channel(args) as channel:
        try:
            return fn(pb_grpc.NodePlaneStub(channel))
        except grpc.RpcError as exc:
            print(
                f"weirctl: {args.controller}: {exc.code().name}: {exc.details()}", file=sys.stderr
            )
            return None
