"""weirctl bpf ...: read the pinned maps of a programmed data plane."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from weir.ctl.main import main
from weir.nodeagent.dataplane import Dataplane, Frontend

from .conftest import Node
from .support import packet, run_xdp
from .test_xdp import FE, SEED, VIP, backend_of, flows, maglev, send, targets


def weirctl(capsys: pytest.CaptureFixture[str], bpffs: Path, *args: str) -> tuple[int, str]:
    code = main(["bpf", *args, "--bpffs", str(bpffs)])
    out, err = capsys.readouterr()
    return code, out + err


def test_inspection_commands(dp: Dataplane, node: Node, capsys) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 3)
    dp.apply_service(FE, bes, maglev(bes))
    udp = Frontend(f"{VIP}:53/UDP", VIP, 53, 17, "random")
    dp.apply_service(udp, targets(7, 1, port=53), maglev(targets(7, 1, port=53), proto="UDP"))
    tracked = flows(5)
    for f in tracked:
        backend_of(dp, f, bes)
    send(dp, tracked[0], l4_bytes=2)  # one parse drop
    for dest in (bytes.fromhex("02000000aa99"), b"\xff" * 6):  # not for this node: passed
        run_xdp(dp.xdp_prog_fd, packet(tracked[1], dest))

    code, out = weirctl(capsys, node.bpffs, "nat", "dump")
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(rf"{VIP} port 80 proto 6 id \d+ count 3 flags maglev", lines[2])
    assert re.fullmatch(rf"{VIP} port 53 proto 17 id \d+ count 1 flags random", lines[0])
    assert re.fullmatch(r"\t\d+:0\t 10\.1\.0\.1:8080 mac 02:00:00:be:00:01 slots 8[34]", lines[3])
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines[3:6]) == 251

    code, out = weirctl(capsys, node.bpffs, "maglev", f"{VIP}:80")
    assert code == 0 and "table size 251, active half 0" in out and "33.4" in out

    code, out = weirctl(capsys, node.bpffs, "ct", "list")
    assert code == 0
    for f in tracked:
        assert re.search(rf"TCP {f.saddr}:{f.sport} -> {VIP}:80 backend 10\.1\.0\.\d:8080", out)
    assert "5 tracked flows" in out

    code, out = weirctl(capsys, node.bpffs, "stats")
    assert code == 0
    assert f"service {FE.id} packets 5 " in out and "new_flows 5" in out
    assert re.search(r"\tparse packets 1 bytes \d+", out)
    passed = out.split("passed, not for this node\n", 1)[1]
    assert re.fullmatch(
        r"\tother_host packets 1 bytes \d+\n\tmulticast packets 1 bytes \d+\n", passed
    )


def test_missing_pins_are_a_clear_error(tmp_path: Path, capsys) -> None:
    code, out = weirctl(capsys, tmp_path, "nat", "dump")
    assert code == 1 and "cannot open the Weir maps" in out
