"""Run by an installed Weir's own python, outside the checkout (tests/packaging/test_wheel.py):
compile and attach the XDP program on an interface, program one Maglev service, and leave
both attached and pinned, as an agent that stops does; with "tc", also the backend role's tc
programs. Prints what it used, as JSON.

    python -I installed_xdp.py INTERFACE PIN_DIR [tc]
"""

import json
import sys
from pathlib import Path

import bcc
import weir
from weir.nodeagent.dataplane import BackendTarget, Dataplane, DataplaneConfig, Frontend, layout
from weir.nodeagent.dataplane.nat import NatConfig, NatDataplane
from weir.nodeagent.maglev import backend_id, build_table

SEED = 7
FRONTEND = Frontend("192.0.2.80:80/TCP", "192.0.2.80", 80, 6, "maglev")
BACKENDS = [BackendTarget(f"10.0.0.{i}", 8080, bytes([2, 0, 0, 0, 0, i])) for i in (1, 2)]


def main(interface: str, pins: Path, tc: bool) -> None:
    table = build_table([backend_id(b.address, b.port, "TCP") for b in BACKENDS], 251, seed=SEED)
    cfg = DataplaneConfig(
        interface=interface,
        bpffs=pins,
        xdp_mode="generic",
        max_services=16,
        max_backends=256,
        max_table_slots=4096,
        conntrack_entries=4096,
    )
    dp = Dataplane.open(cfg)
    try:
        dp.set_seed(SEED)
        dp.apply_service(FRONTEND, BACKENDS, table)
        used = {
            "weir": weir.__file__,
            "xdp_source": str(layout.XDP_SOURCE),
            "bcc": bcc.__file__,
            "xdp_mode": dp.xdp_mode,
            "applied": sorted(dp.applied()),
        }
    finally:
        dp.close()
    if tc:
        nat = NatDataplane.open(NatConfig(interface, pins, max_lb_nodes=8, flows=1024))
        used["tc"] = True
        nat.close()
    print(json.dumps(used))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:] == ["tc"])
