"""BFD Control packets (RFC 5880 section 4.1), without authentication.

    0                   1                   2                   3
    |Vers | Diag    |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
    |                       My Discriminator                        |
    |                      Your Discriminator                       |
    |                    Desired Min TX Interval                    |
    |                   Required Min RX Interval                    |
    |                 Required Min Echo RX Interval                 |

Intervals are in microseconds. decode() applies the checks of section 6.8.6 that do not
need a session; a packet that fails them is discarded (PacketError says why).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
_FORMAT = struct.Struct("!BBBBIIIII")
LENGTH = _FORMAT.size  # 24


class State(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Diag(enum.IntEnum):
    NONE = 0
    DETECTION_TIME_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


class PacketError(ValueError):
    pass


@dataclass(frozen=True)
class ControlPacket:
    state: State
    diag: Diag
    multiplier: int
    my_disc: int
    your_disc: int
    desired_min_tx: int  # microseconds
    required_min_rx: int
    poll: bool = False
    final: bool = False
    # C bit clear, truthfully: our BFD runs only while the agent (the control plane) does.
    # What a router then makes of BFD going down with graceful restart negotiated is its
    # own setting (deploy/README.md, "BGP: BFD and graceful restart").
    control_plane_independent: bool = False

    def encode(self) -> bytes:
        flags = (
            (self.poll << 5) | (self.final << 4) | (self.control_plane_independent << 3)
        )  # A, D and M stay clear: no authentication, no demand mode
        return _FORMAT.pack(
            (VERSION << 5) | int(self.diag),
            (int(self.state) << 6) | flags,
            self.multiplier,
            LENGTH,
            self.my_disc,
            self.your_disc,
            self.desired_min_tx,
            self.required_min_rx,
            0,  # no echo function
        )


def decode(data: bytes) -> ControlPacket:
    if len(data) < LENGTH:
        raise PacketError(f"{len(data)} bytes, shorter than a control packet")
    b0, b1, mult, length, my_disc, your_disc, tx, rx, _ = _FORMAT.unpack_from(data)
    if b0 >> 5 != VERSION:
        raise PacketError(f"version {b0 >> 5}")
    if b1 & 0x04:
        raise PacketError("authenticated packet, and no authentication is configured")
    if not LENGTH <= length <= len(data):
        raise PacketError(f"length field {length} with {len(data)} bytes received")
    if mult == 0:
        raise PacketError("detect multiplier 0")
    if b1 & 0x01:
        raise PacketError("multipoint bit set")
    if my_disc == 0:
        raise PacketError("my discriminator 0")
    state = State(b1 >> 6)
    if your_disc == 0 and state not in (State.DOWN, State.ADMIN_DOWN):
        raise PacketError(f"your discriminator 0 in state {state.label}")
    try:
        diag = Diag(b0 & 0x1F)
    except ValueError:
        diag = Diag.NONE  # a diagnostic from a later RFC: informational only
    return ControlPacket(
        state=state,
        diag=diag,
        multiplier=mult,
        my_disc=my_disc,
        your_disc=your_disc,
        desired_min_tx=tx,
        required_min_rx=rx,
        poll=bool(b1 & 0x20),
        final=bool(b1 & 0x10),
        control_plane_independent=bool(b1 & 0x08),
    )
