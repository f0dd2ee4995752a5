"""BFD (RFC 5880 asynchronous mode, RFC 5881 single hop) for the agent's BGP sessions.

The protocol runs in a daemon process of its own (daemon.py), so that its timing does not
depend on the agent's event loop; the agent drives it through BFDMonitor (client.py):

    bfd = BFDMonitor(on_change=lambda peer: ...)
    await bfd.start()
    bfd.set_sessions({"10.0.0.1": Settings(min_tx_us=300_000, min_rx_us=300_000, multiplier=3)})
    bfd.status("10.0.0.1")          # -> Negotiated (state, intervals) or None
    await bfd.stop(admin_down=True)
"""

from weir.nodeagent.bfd.client import BFDMonitor, BFDOptions
from weir.nodeagent.bfd.packet import Diag, State
from weir.nodeagent.bfd.session import Negotiated, Settings

__all__ = ["BFDMonitor", "BFDOptions", "Diag", "Negotiated", "Settings", "State"]
