"""weirctl: inspect and operate Weir.

Each command group lives in its own module and registers its subcommands here:
the controller's view (snapshot, agents, errors) over gRPC, Weir at a glance (`weirctl
status`), a node's preflight checks (`weirctl doctor`), the local data plane (`weirctl bpf
...`) from the pinned maps, BGP (`weirctl bgp ...`), node drain (`weirctl node
drain|undrain`), health checks (`weirctl health`). --controller defaults to
$WEIR_CONTROLLER (set in the agent's Pod).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that define register(subparsers). Missing ones are skipped so a partial
# install (no bcc on a workstation) still has the controller commands.
GROUPS = (
    "weir.ctl.controller_cmds",
    "weir.ctl.status_cmds",
    "weir.ctl.doctor_cmds",
    "weir.ctl.bpf_cmds",
    "weir.ctl.bgp_cmds",
    "weir.ctl.node_cmds",
    "weir.ctl.flows_cmds",
    "weir.ctl.health_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weirctl", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--controller",
        default=os.environ.get("WEIR_CONTROLLER") or "127.0.0.1:9443",
        help="controller gRPC address: host:port, or unix:///path of its local socket",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
