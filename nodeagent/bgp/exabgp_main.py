"""ExaBGP 5 as the speaker runs it: `python exabgp_main.py server CONF` (run as a script:
it needs ExaBGP, not the agent).

ExaBGP itself, with one addition its configuration lacks: a keepalive interval per peer
(BGPPeer.spec.keepaliveTime). ExaBGP always sends keepalives every third of the negotiated
hold time; here, for the peers listed in the JSON file named by WEIR_EXABGP_KEEPALIVE
({peer address: [keepalive, configured hold time]}), it sends them every keepalive
seconds, scaled down as the hold time was when the peer asked for a shorter one. The file
is read whenever a session comes up, so a reload that changes it takes effect on the
sessions it re-establishes.
"""

from __future__ import annotations

import json
import os

KEEPALIVE_ENV = "WEIR_EXABGP_KEEPALIVE"


def keepalive_for(peer: str, negotiated_hold: int, path: str) -> int | None:
    """The keepalive interval for a session with peer, or None for ExaBGP's own."""
    try:
        with open(path) as f:
            table = json.load(f)
        keepalive, hold = table[peer]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not negotiated_hold:
        return None  # hold time 0: no keepalives at all
    return max(1, int(keepalive) * min(negotiated_hold, int(hold)) // int(hold))


def _patch_keepalive(path: str) -> None:
    from exabgp.reactor import keepalive

    original = keepalive.KA.__init__

    def init(self, session, proto) -> None:  # type: ignore[no-untyped-def]
        original(self, session, proto)
        peer = str(proto.neighbor["peer-address"].top())
        wanted = keepalive_for(peer, int(proto.negotiated.holdtime), path)
        if wanted is not None:
            self.send_timer.keepalive = wanted

    keepalive.KA.__init__ = init


def main() -> None:
    path = os.environ.get(KEEPALIVE_ENV)
    if path:
        _patch_keepalive(path)
    from exabgp.application.main import main as exabgp_main

    exabgp_main()


if __name__ == "__main__":
    main()
