"""The command lines of weir-controller and weir-agent, built from typed options: the one
place the lab, the tests and the benchmarks spell them.

Options left at None are not passed (the command's own default applies); `extra` carries
flags these options do not model (a test's leader-election timers, say). An option the
commands grow is one more field here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Literal

BIN = Path(sys.executable).parent  # the installed commands, beside this interpreter
LogFormat = Literal["auto", "json", "console"]


class CommandLine:
    """Each field is the command's flag of the same name (max_services: --max-services):
    None and False are left out, True is a bare switch; then `extra`."""

    command: ClassVar[str]
    extra: tuple[str, ...]

    def argv(self) -> list[str]:
        out = [str(BIN / self.command)]
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra" or value is None or value is False:
                continue
            out += [f"--{f.name.replace('_', '-')}"] + ([] if value is True else [str(value)])
        return out + list(self.extra)


@dataclass(frozen=True)
class ControllerOptions(CommandLine):
    command: ClassVar[str] = "weir-controller"
    source: Literal["file", "kubernetes"] = "file"
    manifests: Path | None = None  # --source file
    kubeconfig: Path | None = None  # --source kubernetes
    secrets_namespace: str | None = None
    listen: str = "0.0.0.0:9443"
    plaintext: bool = True
    maglev_seed: int | None = None
    debounce_ms: float | None = None
    metrics_listen: str | None = None
    lb_node_selector: str | None = None
    encap_port: int | None = None
    identity: str | None = None
    lease_namespace: str | None = None
    log_format: LogFormat = "json"
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentOptions(CommandLine):
    command: ClassVar[str] = "weir-agent"
    controller: str = ""  # host:port
    plaintext: bool = True
    node: str = ""
    interface: str = "eth0"
    xdp_mode: Literal["auto", "native", "generic"] = "native"
    bpffs: Path | None = None  # the pin directory
    max_services: int | None = 16
    max_backends: int | None = 256
    max_table_slots: int | None = 262144
    conntrack_entries: int | None = 65536
    status_interval: float | None = 1
    drain_grace: float | None = None
    bgp_on_stop: Literal["drain", "restart"] | None = None
    bgp_workdir: Path | None = None  # ExaBGP's config and API socket
    metrics_address: str | None = None  # host:port of /metrics
    metrics_per_backend: bool = False
    flow_sample: int | None = None  # the flow log: 1 in N (weirctl flows)
    flows_address: str | None = None
    log_format: LogFormat = "json"
    extra: tuple[str, ...] = ()
