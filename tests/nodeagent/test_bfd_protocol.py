"""BFD's protocol pieces without a network: Control packets (RFC 5880 4.1, 6.8.6), two
sessions talking to each other on a simulated clock (6.2, 6.8), and the daemon's messages."""

from __future__ import annotations

import dataclasses

import pytest
from weir.nodeagent.bfd import messages
from weir.nodeagent.bfd.packet import LENGTH, ControlPacket, Diag, PacketError, State, decode
from weir.nodeagent.bfd.session import SLOW_TX_US, Negotiated, Session, Settings


def no_jitter(low: float, high: float) -> float:
    return high


def test_packet_round_trip_and_checks() -> None:
    pkt = ControlPacket(
        state=State.UP, diag=Diag.NONE, multiplier=3, my_disc=7, your_disc=9,
        desired_min_tx=100_000, required_min_rx=200_000, poll=True,
    )  # fmt: skip
    wire = pkt.encode()
    assert len(wire) == LENGTH and wire[0] >> 5 == 1  # version 1
    assert decode(wire) == pkt
    assert wire[1] & 0x08 == 0  # C bit clear: BFD lives and dies with the agent
    bad = {
        "short": wire[:20],
        "version": bytes([0x40]) + wire[1:],
        "authenticated": wire[:1] + bytes([wire[1] | 0x04]) + wire[2:],
        "multiplier 0": wire[:2] + b"\x00" + wire[3:],
        "my discriminator 0": wire[:4] + b"\x00\x00\x00\x00" + wire[8:],
        "your discriminator 0 while up": wire[:8] + b"\x00\x00\x00\x00" + wire[12:],
    }
    for what, data in bad.items():
        with pytest.raises(PacketError):
            decode(data)
        assert what


class Link:
    """Two sessions and a clock: each packet one session sends reaches the other at once."""

    def __init__(self, a: Settings, b: Settings) -> None:
        self.now = 0.0
        self.a = Session("10.0.0.2", a, my_disc=1, now=0.0, jitter=no_jitter)
        self.b = Session("10.0.0.1", b, my_disc=2, now=0.0, jitter=no_jitter)
        self.cut = False

    def run(self, seconds: float, step: float = 0.001) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            for me, other in ((self.a, self.b), (self.b, self.a)):
                me.expire(self.now)
                if me.sending_due(self.now):
                    pkt = me.packet()
                    me.sent(self.now)
                    if not self.cut:
                        other.receive(decode(pkt.encode()), self.now)


def test_two_sessions_come_up_and_speed_up() -> None:
    link = Link(Settings(100_000, 100_000, 3), Settings(300_000, 200_000, 3))
    link.run(0.5)
    assert (link.a.state, link.b.state) == (State.UP, State.UP)
    link.run(2.0)  # the Poll sequences announcing the fast rates are over
    a, b = link.a.negotiated(), link.b.negotiated()
    # a sends no faster than b wants to receive, and b no faster than a does.
    assert (a.tx_us, a.rx_us, a.detect_us) == (200_000, 300_000, 900_000)
    assert (b.tx_us, b.rx_us, b.detect_us) == (300_000, 200_000, 600_000)
    assert not link.a.poll and not link.b.poll


def test_silence_takes_the_session_down_after_the_detection_time() -> None:
    link = Link(Settings(100_000, 100_000, 3), Settings(100_000, 100_000, 3))
    link.run(3.0)
    assert link.a.negotiated().detect_us == 300_000
    link.cut = True
    # The last packet came at most one interval (100 ms) before the cut.
    link.run(0.19)
    assert link.a.state == State.UP
    link.run(0.12)
    assert link.a.state == State.DOWN and link.a.diag == Diag.DETECTION_TIME_EXPIRED
    assert link.a.desired_tx == SLOW_TX_US  # at most one packet a second while down
    link.cut = False
    link.run(3.0)
    assert (link.a.state, link.b.state) == (State.UP, State.UP)


def test_admin_down_is_told_and_taken_as_neighbor_down() -> None:
    link = Link(Settings(100_000, 100_000, 3), Settings(100_000, 100_000, 3))
    link.run(1.0)
    link.b.admin_down(link.now)
    link.run(0.2)
    assert link.a.state == State.DOWN and link.a.diag == Diag.NEIGHBOR_DOWN
    assert link.a.remote_state == State.ADMIN_DOWN


def test_messages_round_trip() -> None:
    wanted = {"10.0.0.1": Settings(100_000, 200_000, 3), "2001:db8::1": Settings(1, 2, 5)}
    assert messages.parse_command(messages.sessions_line(wanted)) == wanted
    assert messages.parse_command(messages.STOP_LINE) is None
    shown = Negotiated(State.UP, State.INIT, Diag.NEIGHBOR_DOWN, 100_000, 200_000, 600_000)
    assert messages.parse_event(messages.event_line("10.0.0.1", shown)) == ("10.0.0.1", shown)
    with pytest.raises(RuntimeError, match="no sockets"):
        messages.parse_event(messages.error_line("no sockets"))
    assert dataclasses.replace(shown, state=State.DOWN) != shown
