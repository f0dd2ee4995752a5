"""The speaker's pure parts: config validation, ExaBGP text, event parsing, session table,
and `weirctl bgp peers` formatting. No root, no network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.ctl.bgp_cmds import format_peers, peers_json
from weir.nodeagent.bfd import Diag, Negotiated, State
from weir.nodeagent.bgp import config as bgpconfig
from weir.nodeagent.bgp import exaconf
from weir.nodeagent.bgp.config import Route
from weir.nodeagent.bgp.events import Answer, NeighborEvent, Other, SentUpdate, parse_line
from weir.nodeagent.bgp.exabgp_main import keepalive_for
from weir.nodeagent.bgp.process import RELAY, ExaBGPOptions, ExaBGPProcess
from weir.nodeagent.bgp.sessions import SessionTable
from weir.nodeagent.bgp.speaker import BGPSpeaker

from tests.requirements import requires, root


def peer(name: str = "r1", address: str = "10.0.0.1", **kw: object) -> pb.BGPPeer:
    return pb.BGPPeer(name=name, address=address, asn=kw.pop("asn", 65000), **kw)  # type: ignore[arg-type]


def cfg(*peers: pb.BGPPeer, adverts: tuple[pb.Advertisement, ...] = ()) -> pb.BGPConfig:
    return pb.BGPConfig(local_asn=65001, router_id="10.0.0.2", peers=peers, advertisements=adverts)


# ---- config ------------------------------------------------------------------------------


def test_no_local_asn_means_bgp_off() -> None:
    parsed, errors = bgpconfig.parse(pb.BGPConfig(peers=[peer()]))
    assert not parsed.enabled and errors == []


def test_router_id_falls_back_and_must_be_ipv4() -> None:
    c = pb.BGPConfig(local_asn=65001, peers=[peer()])
    parsed, errors = bgpconfig.parse(c, default_router_id="10.0.0.9")
    assert parsed.router_id == "10.0.0.9" and parsed.enabled and not errors
    parsed, errors = bgpconfig.parse(c)
    assert not parsed.enabled and "router id" in str(errors[0])
    c.router_id = "2001:db8::1"
    assert not bgpconfig.parse(c)[0].enabled


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (peer(address="10.0.0.300"), "not an IP address"),
        (peer(address="0.0.0.0"), "cannot be a BGP peer"),
        (peer(asn=0), "out of range"),
        (peer(hold_time_seconds=2), "hold time"),
        (peer(port=70000), "port"),
        (peer(password="x" * 81), "longer than 80"),
        (peer(graceful_restart=True, graceful_restart_time_seconds=5000), "at most 4095"),
    ],
)
def test_bad_peers_are_skipped_with_a_reason(bad: pb.BGPPeer, message: str) -> None:
    bad.name = "bad"
    parsed, errors = bgpconfig.parse(cfg(bad, peer("good", "10.0.0.5")))
    assert [p.name for p in parsed.peers] == ["good"]
    assert len(errors) == 1 and str(errors[0]).startswith("BGPPeer bad:")
    assert message in str(errors[0])


def test_duplicate_peer_address_keeps_the_first_by_name() -> None:
    parsed, errors = bgpconfig.parse(cfg(peer("b"), peer("a")))
    assert [p.name for p in parsed.peers] == ["a"]
    assert "already used by a" in str(errors[0])


def test_peer_defaults() -> None:
    parsed, _ = bgpconfig.parse(cfg(peer(graceful_restart=True)))
    p = parsed.peers[0]
    assert (p.port, p.hold_time, p.graceful_restart_time) == (179, 0, 120)


def test_advertisements_and_routes_per_peer() -> None:
    adverts = (
        pb.Advertisement(prefix="192.0.2.10/32", communities=["65000:100", "1:2:3", "no-export"]),
        pb.Advertisement(prefix="192.0.2.11/32", local_preference=200, peers=["r2"]),
        pb.Advertisement(prefix="192.0.2.11/32", communities=["65000:7"], peers=["r6", "r1"]),
        pb.Advertisement(prefix="2001:db8::10/128"),
        pb.Advertisement(prefix="192.0.2.12/32", communities=["65536:1"]),  # bad: skipped
    )
    parsed, errors = bgpconfig.parse(
        cfg(
            peer("r1", "10.0.0.1"),
            peer("r2", "10.0.0.3"),
            peer("r6", "2001:db8::1"),
            adverts=adverts,
        )
    )
    assert len(errors) == 1 and "192.0.2.12/32" in str(errors[0]) and "65536:1" in str(errors[0])
    wanted = {"192.0.2.10/32", "192.0.2.11/32", "192.0.2.12/32", "2001:db8::10/128",
              "198.51.100.1/32"}  # fmt: skip
    plan = parsed.routes_for(wanted)
    assert set(plan["10.0.0.1"]) == {"192.0.2.10/32", "192.0.2.11/32"}  # .12 was bad
    assert set(plan["10.0.0.3"]) == {"192.0.2.10/32", "192.0.2.11/32"}
    # One prefix, two advertisements for two groups of peers: each peer gets its own.
    assert plan["10.0.0.1"]["192.0.2.11/32"].communities == ("65000:7",)
    assert plan["10.0.0.3"]["192.0.2.11/32"].local_preference == 200
    assert set(plan["2001:db8::1"]) == {"2001:db8::10/128"}  # families do not mix
    r = plan["10.0.0.1"]["192.0.2.10/32"]
    # Well-known communities go as numbers (no-export: 65535:65281).
    assert r == Route("192.0.2.10/32", ("65000:100", "65535:65281"), ("1:2:3",), 0)


# ---- ExaBGP text ---------------------------------------------------------------------------


def test_api_commands() -> None:
    r = Route("192.0.2.10/32", ("65000:100",), ("1:2:3",), 200)
    assert exaconf.announce("10.0.0.1", r, "10.0.0.2") == (
        "neighbor 10.0.0.1 announce route 192.0.2.10/32 next-hop 10.0.0.2 "
        "community [ 65000:100 ] large-community [ 1:2:3 ] local-preference 200"
    )
    assert exaconf.withdraw("10.0.0.1", "192.0.2.10/32") == (
        "neighbor 10.0.0.1 withdraw route 192.0.2.10/32"
    )
    parsed, _ = bgpconfig.parse(cfg(peer(), peer("r6", "2001:db8::1")))
    assert [exaconf.eor(p) for p in parsed.peers] == [
        "neighbor 10.0.0.1 announce eor ipv4 unicast",
        "neighbor 2001:db8::1 announce eor ipv6 unicast",
    ]


def test_prefixes_are_normalised() -> None:
    assert exaconf.normalise_prefix("192.0.2.10") == "192.0.2.10/32"
    assert exaconf.normalise_prefix("2001:DB8::1") == "2001:db8::1/128"
    with pytest.raises(ValueError):
        exaconf.normalise_prefix("192.0.2.10/24")
    with pytest.raises(ValueError):
        exaconf.normalise_prefix("vip")


def test_rendered_config_is_valid_for_exabgp(tmp_path: Path) -> None:
    parsed, errors = bgpconfig.parse(
        cfg(
            peer("r1", "10.0.0.1", password="s p;a\"c}e'", hold_time_seconds=9),
            peer("r2", "10.0.0.3", port=1179, graceful_restart=True),
            peer("r6", "2001:db8::1", asn=4200000000),
        )
    )
    assert not errors
    text = exaconf.render(parsed, [sys.executable, "-I", str(RELAY), str(tmp_path / "s")])
    assert 's p;a"c' not in text  # the password only appears base64-encoded
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "exabgp", "validate", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"exabgp_log_destination": "stdout", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr


@requires(root)
def test_exabgp_can_open_its_helper_as_the_user_it_drops_to(tmp_path: Path) -> None:
    """ExaBGP opens the helper's program again on every reload, after dropping to its
    user: a program that user cannot reach (an agent installed under a 0700 directory)
    failed every reload, and ExaBGP was restarted with every session reset."""
    opts = ExaBGPOptions()
    program = ExaBGPProcess(tmp_path, opts, lambda _m: None).helper()[0]
    check = "import os, sys; os.close(os.open(sys.argv[1], os.O_RDONLY))"
    opened = subprocess.run(
        ["/usr/bin/python3", "-c", check, program],
        user=opts.user,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert opened.returncode == 0, opened.stderr


def test_render_refuses_a_helper_path_it_cannot_write() -> None:
    parsed, _ = bgpconfig.parse(cfg(peer()))
    with pytest.raises(ValueError):
        exaconf.render(parsed, ["/usr/bin/python3", "/tmp/my dir/relay.py"])


# ---- events --------------------------------------------------------------------------------

HEAD = '{ "exabgp": "5.0.0", "time": 1.5, "host" : "vm", "pid" : 1, "ppid" : 1, "counter": 3, '
NEIGH = ('"neighbor": { "address": { "local": "10.0.0.2", "peer": "10.0.0.1" }, '
         '"asn": { "local": 65001, "peer": 65000 }, "router-id": "10.0.0.2" ')  # fmt: skip


def test_parse_neighbor_events() -> None:
    up = parse_line(HEAD + '"type": "state", ' + NEIGH + ', "state": "up" } }')
    assert up == NeighborEvent("10.0.0.1", "state", "up", "", "10.0.0.2")
    down = parse_line(
        HEAD + '"type": "state", ' + NEIGH + ', "state": "down", "reason": "peer reset" } }'
    )
    assert down == NeighborEvent("10.0.0.1", "state", "down", "peer reset", "10.0.0.2")
    fsm = parse_line(HEAD + '"type": "fsm", ' + NEIGH + ', "state": "OPENCONFIRM" } }')
    assert fsm == NeighborEvent("10.0.0.1", "fsm", "openconfirm")
    connected = parse_line(
        HEAD + '"type": "state", "neighbor": { "address": { "local": "None", "peer": '
        '"10.0.0.1" }, "state": "connected" } }'
    )
    assert connected == NeighborEvent("10.0.0.1", "state", "connected")


def test_parse_sent_updates() -> None:
    announce = parse_line(
        HEAD + '"type": "update", ' + NEIGH + ', "direction": "send", "message": { "update": '
        '{ "attribute": { "origin": "igp" }, "announce": { "ipv4 unicast": { "10.0.0.2": '
        '[ { "nlri": "192.0.2.10/32" }, { "nlri": "192.0.2.11/32" } ] } } } } } }'
    )
    assert announce == SentUpdate("10.0.0.1", ("192.0.2.10/32", "192.0.2.11/32"))
    withdraw = parse_line(
        HEAD + '"type": "update", ' + NEIGH + ', "direction": "send", "message": { "update": '
        '{ "withdraw": { "ipv4 unicast": [ { "nlri": "192.0.2.10/32" } ] } } } } }'
    )
    assert withdraw == SentUpdate("10.0.0.1", withdrawn=("192.0.2.10/32",))
    eor = parse_line(
        HEAD + '"type": "update", ' + NEIGH + ', "direction": "send", "message": { "eor": '
        '{ "afi" : "ipv4", "safi" : "unicast" } } } }'
    )
    assert eor == SentUpdate("10.0.0.1", eor=True)


def test_parse_answers_and_noise() -> None:
    assert parse_line("done\n") == Answer(True)
    assert parse_line("error") == Answer(False)
    assert isinstance(parse_line("reload in progress"), Other)
    assert isinstance(parse_line("{ not json"), Other)
    assert isinstance(parse_line(HEAD + '"type": "notification", "notification": "shutdown" }'),
                      Other)  # fmt: skip


# ---- sessions ------------------------------------------------------------------------------


def test_session_table() -> None:
    now = [100.0]
    t = SessionTable(clock=lambda: now[0])
    parsed, _ = bgpconfig.parse(cfg(peer("r1", "10.0.0.1"), peer("r2", "10.0.0.3")))
    t.set_peers(parsed.peers)
    assert [(s.peer, s.state) for s in t.status()] == [("r1", "idle"), ("r2", "idle")]
    assert t.apply(NeighborEvent("10.0.0.1", "fsm", "opensent"))
    assert not t.apply(NeighborEvent("10.0.0.9", "fsm", "opensent"))  # not ours
    assert t.apply(NeighborEvent("10.0.0.1", "fsm", "established"))
    assert not t.apply(NeighborEvent("10.0.0.1", "state", "up"))  # already known
    assert t.apply_update(SentUpdate("10.0.0.1", ("192.0.2.10/32", "192.0.2.11/32")))
    assert t.apply_update(SentUpdate("10.0.0.1", withdrawn=("192.0.2.11/32",)))
    now[0] = 165.0
    s = t.status()[0]
    assert (s.state, s.uptime_seconds, s.routes_sent) == ("established", 65, 1)
    assert t.on_wire() == {"192.0.2.10/32"}
    assert t.apply(NeighborEvent("10.0.0.1", "state", "down", "hold timer expired"))
    s = t.status()[0]
    assert (s.state, s.uptime_seconds, s.routes_sent) == ("idle", 0, 0)
    t.apply(NeighborEvent("10.0.0.3", "fsm", "established"))
    assert t.reset() and all(s.state == "idle" for s in t.status())
    t.set_peers(parsed.peers[1:])
    assert [s.peer for s in t.status()] == ["r2"]


# ---- weirctl bgp peers ---------------------------------------------------------------------


def test_weirctl_peers_table() -> None:
    agents = [
        pb.AgentInfo(
            node="lb-1",
            connected=True,
            status=pb.NodeStatus(
                bgp_sessions=[
                    pb.BGPSessionStatus(peer="r1", address="10.0.0.1", state="established",
                                        uptime_seconds=3700, routes_sent=2),
                    pb.BGPSessionStatus(peer="r2", address="10.0.0.3", state="active"),
                    pb.BGPSessionStatus(peer="r3", address="10.0.0.4", state="established",
                                        bfd_state="up", bfd_transmit_ms=100,
                                        bfd_receive_ms=120, bfd_detect_ms=360),
                    pb.BGPSessionStatus(peer="r4", address="10.0.0.5", state="idle",
                                        bfd_state="down",
                                        bfd_diagnostic="control detection time expired"),
                ],
                announced=["192.0.2.10/32"],
            ),
        ),
        pb.AgentInfo(node="lb-2", connected=False, status=pb.NodeStatus(draining=True)),
    ]  # fmt: skip
    lines = format_peers(agents).splitlines()
    assert lines[0].split() == [
        "NODE", "PEER", "ADDRESS", "STATE", "UPTIME", "ROUTES", "SENT", "BFD",
    ]  # fmt: skip
    assert lines[1].split() == ["lb-1", "r1", "10.0.0.1", "established", "1h", "2", "-"]
    assert lines[2].split() == ["lb-1", "r2", "10.0.0.3", "active", "-", "0", "-"]
    assert lines[3].split()[-5:] == ["0", "up", "tx/rx/detect", "100/120/360", "ms"]
    assert lines[4].endswith("down (control detection time expired)")
    assert "lb-2 (stale) (draining)" in lines[5] and "no BGP peers" in lines[5]
    assert '"state": "established"' in peers_json(agents)


class _ReloadReportsUp:
    """An ExaBGP stand-in whose reload brings the new peer's session up before returning,
    as the real one does when the peer answers fast (seen under load in CI)."""

    def __init__(self, speaker: BGPSpeaker, peer: str, local: str) -> None:
        self.speaker, self.peer, self.local = speaker, peer, local

    def helper(self) -> str:
        return "/bin/true"

    async def reload(self, _config: str, _keepalives: str) -> bool:
        self.speaker._on_message(NeighborEvent(self.peer, "state", "up", local=self.local))
        return True

    async def command(self, _line: str) -> bool:
        return True


async def test_a_session_up_during_the_reload_is_not_lost() -> None:
    def peer(name: str, address: str) -> bgpconfig.Peer:
        return bgpconfig.Peer(name, address, 65000, 179, 0, "", 0)

    r1, r2 = peer("r1", "10.98.0.1"), peer("r2", "10.98.0.2")
    before = bgpconfig.SpeakerConfig(65001, "10.98.0.11", (r1,))
    after = bgpconfig.SpeakerConfig(65001, "10.98.0.11", (r1, r2))
    speaker = BGPSpeaker()
    speaker._sessions.set_peers(before.peers)
    await speaker._reload(_ReloadReportsUp(speaker, r2.address, "10.98.0.11"), before, after)
    assert speaker._sessions.established(r2.address)
    # Our address on the new session is known, so its routes and End-of-RIB can go.
    assert speaker._local[r2.address] == "10.98.0.11"
    assert r2.address in speaker._eor_due


def test_med_prepend_keepalive_and_route_refresh_in_exabgp_terms(tmp_path: Path) -> None:
    steer = pb.Advertisement(prefix="192.0.2.10/32", med=0, as_path_prepend=2)
    parsed, errors = bgpconfig.parse(
        cfg(peer(keepalive_time_seconds=10, hold_time_seconds=90), peer("i", "10.0.0.3",
            asn=65001), adverts=(steer,))
    )  # fmt: skip
    assert not errors
    plan = parsed.routes_for({"192.0.2.10/32"})
    ebgp, ibgp = plan["10.0.0.1"]["192.0.2.10/32"], plan["10.0.0.3"]["192.0.2.10/32"]
    # MED 0 is sent (unset is not); the prepend is the whole path, towards eBGP only.
    assert exaconf.attributes(ebgp, "10.0.0.2").endswith("med 0 as-path [ 65001 65001 65001 ]")
    assert exaconf.attributes(ibgp, "10.0.0.2").endswith("med 0")
    conf = exaconf.render(parsed, "/bin/true")
    assert conf.count("capability { route-refresh enable; }") == 2
    # Keepalives every 10 s with hold 90; a router asking for hold 30 gets them every 3 s.
    assert json.loads(exaconf.keepalives(parsed)) == {"10.0.0.1": [10, 90]}
    path = tmp_path / "keepalive.json"
    path.write_text(exaconf.keepalives(parsed))
    assert keepalive_for("10.0.0.1", 90, str(path)) == 10
    assert keepalive_for("10.0.0.1", 30, str(path)) == 3
    assert keepalive_for("10.0.0.1", 0, str(path)) is None  # hold 0: no keepalives
    assert keepalive_for("10.0.0.3", 90, str(path)) is None  # ExaBGP's own: hold / 3


def bfd_shown(state: State, remote: State = State.UP) -> Negotiated:
    return Negotiated(state, remote, Diag.NONE, 100_000, 100_000, 300_000)


async def test_bfd_down_withholds_the_routes_until_it_is_up_again() -> None:
    bfd = pb.BFD(min_transmit_ms=100, min_receive_ms=100, detect_multiplier=3)
    required = pb.BFD(min_transmit_ms=100, min_receive_ms=100, detect_multiplier=3,
                      required=True)  # fmt: skip
    advert = pb.Advertisement(prefix="192.0.2.10/32")
    config = cfg(peer(bfd=bfd), peer("r2", "10.0.0.3", bfd=required), peer("r3", "10.0.0.4"),
                 adverts=(advert,))  # fmt: skip
    sp = BGPSpeaker()
    await sp.configure(config)
    await sp.announce({"192.0.2.10/32"})

    def routed() -> set[str]:
        return {peer for peer, routes in sp._plan().items() if routes}

    # Before BFD is up: only the peer that requires it waits.
    assert routed() == {"10.0.0.1", "10.0.0.4"}
    sp._bfd._set("10.0.0.1", bfd_shown(State.UP))
    sp._bfd._set("10.0.0.3", bfd_shown(State.UP))
    assert routed() == {"10.0.0.1", "10.0.0.3", "10.0.0.4"}
    # Down: the session is closed, and the peer gets no routes until BFD is back up.
    sp._bfd._set("10.0.0.1", bfd_shown(State.DOWN, State.DOWN))
    assert sp._teardown_due == {"10.0.0.1"} and routed() == {"10.0.0.3", "10.0.0.4"}
    sp._bfd._set("10.0.0.1", bfd_shown(State.UP))
    assert routed() == {"10.0.0.1", "10.0.0.3", "10.0.0.4"}
    # The peer taking BFD down on purpose (AdminDown) is no failure.
    sp._teardown_due.clear()
    sp._bfd._set("10.0.0.3", bfd_shown(State.DOWN, State.ADMIN_DOWN))
    assert not sp._teardown_due and "10.0.0.3" in routed()
    # Nor is BFD taken off a peer.
    sp._bfd._set("10.0.0.3", bfd_shown(State.UP))
    await sp.configure(cfg(peer(bfd=bfd), peer("r2", "10.0.0.3"), peer("r3", "10.0.0.4"),
                           adverts=(advert,)))  # fmt: skip
    assert not sp._teardown_due and sp.sessions()[1].bfd_state == ""
    assert routed() == {"10.0.0.1", "10.0.0.3", "10.0.0.4"}
