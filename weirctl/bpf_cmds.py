"""weirctl bpf nat dump | nat local | nat flows | maglev <vip>:<port> | ct list | stats: the
local data planes, read straight from the pinned maps under --bpffs (no agent or compiler
needed). The load-balancer role's maps (XDP) answer nat dump, maglev and ct list; the
backend role's (tc) nat local and nat flows; stats shows whichever the node has.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from weir.common import protocols
from weir.nodeagent.dataplane.inspection import (
    ct_entries,
    mac_text,
    nat_services,
    pass_counts,
    stats,
)
from weir.nodeagent.dataplane.layout import ENCAP_OVERHEAD
from weir.nodeagent.dataplane.model import DataplaneError
from weir.nodeagent.dataplane.nat import TCP_IP_HEADERS
from weir.nodeagent.dataplane.nat_pinned import PinnedNatMaps, has_nat_pins
from weir.nodeagent.dataplane.pinned import PinnedMaps, ip_of, port_of

DEFAULT_BPFFS = Path("/sys/fs/bpf/weir")
PROTO_CHOICES = tuple(protocols.name_of(n).lower() for n in sorted(protocols.DATAPLANE))


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bpffs", type=Path, default=DEFAULT_BPFFS, help="the agent's pin directory"
    )
    bpf = sub.add_parser("bpf", help="the local data planes (pinned maps)")
    groups = bpf.add_subparsers(dest="bpf_command", required=True)

    nat = groups.add_parser("nat", help="frontends and backends; translations to local pods")
    nat_sub = nat.add_subparsers(dest="nat_command", required=True)
    p = nat_sub.add_parser("dump", parents=[common], help="one line per frontend, then backends")
    p.set_defaults(func=_run(nat_dump))
    p = nat_sub.add_parser(
        "local", parents=[common], help="backend role: translations to local endpoints"
    )
    p.set_defaults(func=_run_nat(nat_local))
    p = nat_sub.add_parser(
        "flows", parents=[common], help="backend role: flows whose replies are translated back"
    )
    p.add_argument("--limit", type=int, default=None, help="print at most this many")
    p.set_defaults(func=_run_nat(nat_flows))

    p = groups.add_parser("maglev", parents=[common], help="one service's Maglev table")
    p.add_argument("frontend", help="<vip>:<port>")
    p.add_argument("--proto", choices=PROTO_CHOICES, help="when the port serves both")
    p.set_defaults(func=_run(maglev))

    ct_group = groups.add_parser("ct", help="connection tracking")
    ct_sub = ct_group.add_subparsers(dest="ct_command", required=True)
    p = ct_sub.add_parser("list", parents=[common], help="tracked flows")
    p.add_argument("--limit", type=int, default=None, help="print at most this many")
    p.set_defaults(func=_run(ct_list))

    p = groups.add_parser("stats", parents=[common], help="counters and drop reasons")
    p.set_defaults(func=show_stats)


Maps = TypeVar("Maps", PinnedMaps, PinnedNatMaps)


def _run(fn: Callable[[PinnedMaps, argparse.Namespace], int]) -> Callable[..., int]:
    return _with_maps(PinnedMaps, fn)


def _with_maps(
    open_maps: Callable[[Path], Maps], fn: Callable[[Maps, argparse.Namespace], int]
) -> Callable[..., int]:
    """A command handler: fn with the maps opened from --bpffs, closed after."""

    def handler(args: argparse.Namespace) -> int:
        try:
            maps = open_maps(args.bpffs)
        except DataplaneError as exc:
            print(f"weirctl: {exc}", file=sys.stderr)
            return 1
        try:
            return fn(maps, args)
        finally:
            maps.close()

    return handler


def _run_nat(fn: Callable[[PinnedNatMaps, argparse.Namespace], int]) -> Callable[..., int]:
    """The backend role's maps; a node without the role has none, which is no error."""
    run = _with_maps(PinnedNatMaps, fn)

    def handler(args: argparse.Namespace) -> int:
        if not has_nat_pins(args.bpffs):
            print(f"no backend role on this node (no backend-role maps under {args.bpffs})")
            return 0
        return run(args)

    return handler


def nat_dump(maps: PinnedMaps, args: argparse.Namespace) -> int:
    """L2 DSR backends with their MAC; encapsulated ones `via` their node, with the next
    hop's MAC."""
    for svc in nat_services(maps):
        rec = svc.record
        print(
            f"{rec.vip} port {rec.port} proto {rec.proto} id {rec.index} "
            f"count {len(svc.backends)} flags {svc.flags}"
        )
        for i, b in enumerate(svc.backends):
            via = f" via {b.node}" if b.node else ""
            print(
                f"\t{rec.index}:{i}\t {b.address}:{b.port}{via} mac {mac_text(b.mac)} "
                f"slots {b.slots}"
            )
    return 0


def nat_local(maps: PinnedNatMaps, args: argparse.Namespace) -> int:
    cfg = maps.config()
    if cfg.node_be:
        mtu = f" (underlay MTU {cfg.mss + ENCAP_OVERHEAD + TCP_IP_HEADERS})" if cfg.mss else ""
        print(
            f"node {ip_of(cfg.node_be)} encap port {port_of(cfg.port_be)} mss clamp {cfg.mss}{mtu}"
        )
    else:
        print("node not configured: every packet passes untouched")
    print(f"lb nodes {' '.join(maps.lb_nodes()) or '-'}")
    translations = maps.translations()
    for t in translations:
        b, c = t.backend, maps.backend_counter(t)
        print(
            f"{b.vip} port {b.vport} proto {b.proto} -> {b.address}:{b.port} "
            f"packets {c.packets} bytes {c.bytes} new_flows {c.new_flows}"
        )
    print(f"{len(translations)} local translations, {maps.capacity('local_backends')} entries")
    return 0


def nat_flows(maps: PinnedNatMaps, args: argparse.Namespace) -> int:
    flows = maps.flows()
    for f in flows[: args.limit]:
        print(
            f"{protocols.name_of(f.proto)} {f.address}:{f.port} -> {f.client}:{f.cport} "
            f"as {f.vip}:{f.vport}"
        )
    print(f"{len(flows)} flows translated back, {maps.capacity('nat_flows')} entries")
    return 0


def maglev(maps: PinnedMaps, args: argparse.Namespace) -> int:
    vip, _, port_text = args.frontend.rpartition(":")
    if not vip or not port_text.isdigit():
        print(f"weirctl: {args.frontend!r} is not <vip>:<port>", file=sys.stderr)
        return 2
    port = int(port_text)
    wanted = protocols.number_of(args.proto) if args.proto else None
    found = [
        s
        for s in nat_services(maps)
        if s.record.vip == vip and s.record.port == port and wanted in (None, s.record.proto)
    ]
    if not found:
        print(f"weirctl: no service {args.frontend} in {args.bpffs}", file=sys.stderr)
        return 1
    for svc in found:
        print(
            f"service {svc.id} ({protocols.name_of(svc.record.proto)}) "
            f"strategy {svc.strategy}, affinity {svc.affinity}"
        )
        print(
            f"table size {svc.table_size}, active half {svc.active_half} (base {svc.base}), "
            f"inactive half {1 - svc.active_half} (base {svc.inactive_base}, "
            f"size {svc.inactive_size})"
        )
        print(f"{'backend':<24} {'mac':<18} {'slots':>7} {'share':>7}")
        for b in svc.backends:
            share = 100.0 * b.slots / svc.table_size if svc.table_size else 0.0
            print(
                f"{b.address + ':' + str(b.port):<24} {mac_text(b.mac):<18} "
                f"{b.slots:>7} {share:>6.2f}%"
            )
    return 0


def ct_list(maps: PinnedMaps, args: argparse.Namespace) -> int:
    entries, total = ct_entries(maps, args.limit)
    for e in entries:
        client = f"{e.client}:{e.client_port}" if e.client else "?"
        state = "" if e.live else " stale"
        print(
            f"{protocols.name_of(e.proto)} {client} -> {e.vip}:{e.port} "
            f"backend {e.backend}:{e.backend_port} mac {mac_text(e.backend_mac)}{state}"
        )
    print(f"{total} tracked flows, {maps.capacity('conntrack') * 4} entries")
    return 0


def show_stats(args: argparse.Namespace) -> int:
    """The load-balancer role's counters, then the backend role's: whichever are here."""
    nat = has_nat_pins(args.bpffs)
    try:
        maps = PinnedMaps(args.bpffs)
    except DataplaneError as exc:
        if not nat:
            print(f"weirctl: {exc}", file=sys.stderr)
            return 1
    else:
        try:
            _lb_stats(maps)
        finally:
            maps.close()
    if nat:
        return _run_nat(_nat_stats)(args)
    return 0


def _nat_stats(maps: PinnedNatMaps, args: argparse.Namespace) -> int:
    events, drops = maps.counters()
    print("backend node")
    for c in events:
        print(f"\t{c.name} packets {c.packets} bytes {c.bytes} new_flows {c.new_flows}")
    print("backend node drops")
    for c in drops:
        print(f"\t{c.name} packets {c.packets} bytes {c.bytes}")
    return 0


def _lb_stats(maps: PinnedMaps) -> None:
    services, drops = stats(maps)
    for svc, backends in services:
        print(
            f"service {svc.name} packets {svc.packets} bytes {svc.bytes} new_flows {svc.new_flows}"
        )
        for b in backends:
            print(f"\tbackend {b.name} packets {b.packets} bytes {b.bytes} new_flows {b.new_flows}")
    print("drops")
    for d in drops:
        print(f"\t{d.name} packets {d.packets} bytes {d.bytes}")
    print("passed, not for this node")
    for p in pass_counts(maps):
        print(f"\t{p.name} packets {p.packets} bytes {p.bytes}")
