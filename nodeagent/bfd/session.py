"""One BFD session in asynchronous mode (RFC 5880 section 6): its state machine, the
negotiated intervals and its two timers, driven by the daemon's loop (daemon.py). Times are
seconds from one monotonic clock, passed in; intervals on the wire are microseconds.

Timers. While the session is not Up we send at most one packet a second (section 6.8.3);
once Up, at the configured rate, announced with a Poll sequence, and each interval is
jittered down by up to 25% (10-25% with a multiplier of 1; section 6.8.7). The detection
time is the remote's multiplier times the slower of our required receive interval and its
desired transmit interval (section 6.8.4).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from weir.nodeagent.bfd.packet import ControlPacket, Diag, State

SLOW_TX_US = 1_000_000  # the transmit interval while the session is not Up
US = 1e-6


@dataclass(frozen=True)
class Settings:
    min_tx_us: int  # our desired minimum transmit interval
    min_rx_us: int  # our required minimum receive interval
    multiplier: int


@dataclass(frozen=True)
class Negotiated:
    """What a session shows: its state and the intervals in use now (microseconds)."""

    state: State
    remote_state: State
    diag: Diag
    tx_us: int  # how often we send
    rx_us: int  # how often the peer sends
    detect_us: int  # silence after which the session goes down


class Session:
    def __init__(
        self,
        peer: str,
        settings: Settings,
        my_disc: int,
        now: float,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.peer = peer
        self.settings = settings
        self.my_disc = my_disc
        self._jitter = jitter
        self.state = State.DOWN
        self.diag = Diag.NONE
        self.remote_disc = 0
        self.remote_state = State.DOWN
        self.remote_min_rx = 1  # RFC 5880 6.8.1: until the peer says otherwise
        self.remote_min_tx = 0
        self.remote_mult = 0
        self.desired_tx = SLOW_TX_US
        self.poll = False  # a Poll sequence is running: P set until the peer's Final
        self.final_due = False  # the peer polled: answer with F in the next packet
        self.next_tx = now
        self.detect_at: float | None = None

    # -- what the daemon asks ---------------------------------------------------------------

    def tx_interval_us(self) -> int:
        return max(self.desired_tx, self.remote_min_rx)

    def detect_us(self) -> int:
        return self.remote_mult * max(self.settings.min_rx_us, self.remote_min_tx)

    def negotiated(self) -> Negotiated:
        return Negotiated(
            state=self.state,
            remote_state=self.remote_state,
            diag=self.diag,
            tx_us=self.tx_interval_us(),
            rx_us=max(self.settings.min_rx_us, self.remote_min_tx) if self.remote_mult else 0,
            detect_us=self.detect_us(),
        )

    def deadline(self) -> float:
        return min(self.next_tx, self.detect_at if self.detect_at is not None else self.next_tx)

    def packet(self) -> ControlPacket:
        """The next packet to send; it carries the Final the peer is waiting for."""
        pkt = ControlPacket(
            state=self.state,
            diag=self.diag,
            multiplier=self.settings.multiplier,
            my_disc=self.my_disc,
            your_disc=self.remote_disc,
            desired_min_tx=self.desired_tx,
            required_min_rx=self.settings.min_rx_us,
            poll=self.poll and not self.final_due,  # P and F are never both set
            final=self.final_due,
        )
        self.final_due = False
        return pkt

    def sending_due(self, now: float) -> bool:
        """Time to send (the daemon sends packet(), then calls sent())."""
        if now < self.next_tx:
            return False
        if self.remote_min_rx == 0 and not self.final_due:  # the peer wants no packets
            self.next_tx = now + self.tx_interval_us() * US
            return False
        return True

    def sent(self, now: float) -> None:
        low = 0.75
        high = 0.9 if self.settings.multiplier == 1 else 1.0
        self.next_tx = now + self.tx_interval_us() * US * self._jitter(low, high)

    # -- events ---------------------------------------------------------------------------

    def expire(self, now: float) -> bool:
        """The detection timer; True when the state changed."""
        if self.detect_at is None or now < self.detect_at:
            return False
        self.detect_at = None
        self.remote_disc = 0
        if self.state in (State.INIT, State.UP):
            self._to(State.DOWN, Diag.DETECTION_TIME_EXPIRED, now)
            return True
        return False

    def receive(self, pkt: ControlPacket, now: float) -> bool:
        """A valid packet for this session (section 6.8.6); True when the state changed."""
        self.remote_disc = pkt.my_disc
        self.remote_state = pkt.state
        self.remote_min_tx = pkt.desired_min_tx
        old_interval = self.tx_interval_us()
        self.remote_min_rx = pkt.required_min_rx
        self.remote_mult = pkt.multiplier
        if pkt.final:
            self.poll = False
        if self.tx_interval_us() < old_interval:  # the peer wants packets sooner
            self.next_tx = min(self.next_tx, now + self.tx_interval_us() * US)
        if self.state == State.ADMIN_DOWN:
            return False
        self.detect_at = now + self.detect_us() * US
        if pkt.poll:
            self.final_due = True
            self.next_tx = now
        before = self.state
        if pkt.state == State.ADMIN_DOWN:
            if self.state != State.DOWN:
                self._to(State.DOWN, Diag.NEIGHBOR_DOWN, now)
        elif self.state == State.DOWN:
            if pkt.state == State.DOWN:
                self._to(State.INIT, Diag.NONE, now)
            elif pkt.state == State.INIT:
                self._to(State.UP, Diag.NONE, now)
        elif self.state == State.INIT:
            if pkt.state in (State.INIT, State.UP):
                self._to(State.UP, Diag.NONE, now)
        elif pkt.state == State.DOWN:
            self._to(State.DOWN, Diag.NEIGHBOR_DOWN, now)
        return self.state != before

    def admin_down(self, now: float) -> None:
        """The session is being removed: tell the peer it is not a failure (diag 7)."""
        self._to(State.ADMIN_DOWN, Diag.ADMIN_DOWN, now)

    def _to(self, state: State, diag: Diag, now: float) -> None:
        self.state = state
        if diag != Diag.NONE or state == State.UP:
            self.diag = diag
        wanted = self.settings.min_tx_us if state == State.UP else SLOW_TX_US
        # Up: announce the new rate with a Poll sequence (it applies at once, being lower).
        self.poll = state == State.UP and wanted != self.desired_tx
        self.desired_tx = wanted
        self.next_tx = min(self.next_tx, now + self.tx_interval_us() * US)
