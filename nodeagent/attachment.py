"""Whether this node's programs are still the ones on its uplink, and putting them back.

Anything with the right capabilities can take a program off an interface (`ip link set dev
eth0 xdp off`, another tool's cleanup) or put its own in its place, and the kernel tells no
one: a load-balancer node whose XDP program is gone keeps announcing its VIPs and drops the
flows routed to it. nodeagent.forwarding_watch runs these checks every second.

A program is ours when its id is that of the program our pin names (how the agent tells
its program apart without CAP_SYS_ADMIN, as nodeagent/dataplane/loader.py does) or of the
one this agent loaded. check() says whether ours is there; reattach() puts it back where
nothing is attached, never over another program. All of it blocks (bpf syscalls): call it
in a worker thread.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from weir.nodeagent.dataplane import Dataplane, DataplaneError, bpfsys, layout, loader
from weir.nodeagent.dataplane.nat import PROG_PINS, TC_HANDLE, NatDataplane

XDP_ATTACHED_MULTI = 4  # programs in more than one mode; bpf_xdp_query names none of them


@dataclass(frozen=True)
class Attachment:
    problem: str = ""  # "" while ours is attached and nothing else
    missing: bool = False  # nothing attached where ours belongs: reattach() may fix it

    @property
    def ok(self) -> bool:
        return not self.problem


class Probe(Protocol):
    """One data plane's attachment (blocking calls)."""

    def check(self) -> Attachment: ...

    def reattach(self) -> None:
        """Attach ours where nothing is; DataplaneError when it cannot."""
        ...


def _ifindex(interface: str) -> int | None:
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        return None


def _pinned_id(pin: Path) -> int:
    """The id of the program pinned at pin, 0 when there is none."""
    try:
        fd = bpfsys.obj_get(str(pin))
    except FileNotFoundError:
        return 0
    try:
        return bpfsys.prog_info(fd).id
    finally:
        os.close(fd)


class XdpAttachment:
    """The load-balancer role's XDP program (Dataplane)."""

    def __init__(self, dp: Dataplane) -> None:
        self._interface = dp.cfg.interface
        self._pin = dp.cfg.bpffs / layout.PROG_PIN
        self._fd = dp.xdp_prog_fd
        self._mode = dp.xdp_mode
        self._own_id = 0

    def check(self) -> Attachment:
        ifindex = _ifindex(self._interface)
        if ifindex is None:
            return Attachment(f"interface {self._interface} does not exist")
        state = bpfsys.xdp_query(ifindex)
        if state.mode == XDP_ATTACHED_MULTI:
            return Attachment(
                f"XDP programs in several modes on {self._interface}: another is beside ours"
            )
        if not state.prog_id:
            return Attachment(f"no XDP program on {self._interface}", missing=True)
        if not self._own_id:
            self._own_id = bpfsys.prog_info(self._fd).id
        if state.prog_id in (self._own_id, _pinned_id(self._pin)):
            return Attachment()
        return Attachment(
            f"another XDP program (id {state.prog_id}) is attached to {self._interface}; "
            "left in place"
        )

    def reattach(self) -> None:
        ifindex = _ifindex(self._interface)
        if ifindex is None:
            raise DataplaneError(f"interface {self._interface} does not exist")
        # Refuses (DataplaneError) should another program have been attached since check().
        loader.attach(ifindex, self._interface, self._fd, self._mode, self._pin)


class TcAttachment:
    """The backend role's tc programs (NatDataplane), identified by their pins only."""

    def __init__(self, nat: NatDataplane) -> None:
        self._interface = nat.cfg.interface
        self._pins = {
            nat.cfg.bpffs / pin: (point, priority) for pin, point, priority in PROG_PINS.values()
        }

    def _missing(self, ifindex: int) -> tuple[list[Path], list[str]]:
        """The pins whose program is not attached where it belongs (nothing is), and what
        is wrong besides."""
        missing, wrong = [], []
        for pin, (point, priority) in self._pins.items():
            attached = bpfsys.tc_query(ifindex, point, TC_HANDLE, priority)
            ours = _pinned_id(pin)
            if not ours:
                wrong.append(f"the pin {pin} is gone: its program cannot be told or restored")
            elif not attached:
                missing.append(pin)
            elif attached != ours:
                wrong.append(
                    f"another tc program (id {attached}) is at {pin.name}'s place on "
                    f"{self._interface}; left in place"
                )
        return missing, wrong

    def check(self) -> Attachment:
        ifindex = _ifindex(self._interface)
        if ifindex is None:
            return Attachment(f"interface {self._interface} does not exist")
        missing, wrong = self._missing(ifindex)
        problems = [f"no tc program at {pin.name}'s place on {self._interface}" for pin in missing]
        return Attachment("; ".join(problems + wrong), missing=bool(missing))

    def reattach(self) -> None:
        ifindex = _ifindex(self._interface)
        if ifindex is None:
            raise DataplaneError(f"interface {self._interface} does not exist")
        missing, _ = self._missing(ifindex)
        try:
            bpfsys.tc_hook_create(ifindex)
            for pin in missing:
                point, priority = self._pins[pin]
                fd = bpfsys.obj_get(str(pin))
                try:
                    bpfsys.tc_attach(ifindex, point, fd, TC_HANDLE, priority)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise DataplaneError(
                f"cannot attach the tc programs to {self._interface}: {exc}"
            ) from exc
