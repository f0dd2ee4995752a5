"""BGP communities as Weir spells them: one parser for the controller (BGPAdvertisement
validation) and the agent (what it renders for ExaBGP), so that whatever the controller
accepts, the agent can announce.

    "65000:100"     standard (RFC 1997): two 16-bit numbers
    "65000:1:2"     large (RFC 8092): three 32-bit numbers
    "no-export"     a well-known name (the table below; "nopeer" is also read as no-peer)

A community is kept in its canonical text (lowercase name, numbers without leading zeros)
and sent as numbers: ExaBGP and routers each know their own subset of names.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_16 = 0xFFFF
MAX_32 = 0xFFFFFFFF

# Well-known communities (IANA "BGP Well-known Communities"), 65535:x.
WELL_KNOWN = {
    "graceful-shutdown": 0,  # RFC 8326
    "blackhole": 666,  # RFC 7999
    "no-export": 0xFF01,  # RFC 1997
    "no-advertise": 0xFF02,
    "no-export-subconfed": 0xFF03,
    "no-peer": 0xFF04,  # RFC 3765
}
ALIASES = {"nopeer": "no-peer"}


@dataclass(frozen=True, order=True)
class Community:
    text: str  # canonical: "65000:100", "65000:1:2" or a well-known name
    large: bool

    @property
    def value(self) -> str:
        """As numbers ("65535:65281" for no-export), the way it is sent."""
        if self.text in WELL_KNOWN:
            return f"{MAX_16}:{WELL_KNOWN[self.text]}"
        return self.text


def parse(text: str) -> Community:
    """ValueError with a message meant for a person when text is not a community."""
    value = text.strip().lower()
    value = ALIASES.get(value, value)
    if value in WELL_KNOWN:
        return Community(value, large=False)
    parts = value.split(":")
    limit = {2: MAX_16, 3: MAX_32}.get(len(parts))
    if limit is None or not all(p.isdigit() and int(p) <= limit for p in parts):
        names = ", ".join(sorted(WELL_KNOWN))
        raise ValueError(
            f'{text!r} is not a community ("65000:100" with 16-bit parts, "65000:1:2" with '
            f"32-bit parts, or one of {names})"
        )
    return Community(":".join(str(int(p)) for p in parts), large=len(parts) == 3)
