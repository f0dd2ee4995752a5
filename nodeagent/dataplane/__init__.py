"""Weir's XDP data plane: load or adopt the program and its pinned maps, program
services atomically, read them back. See README.md in this directory for the design.

    dp = Dataplane.open(DataplaneConfig(interface="eth0"))
    dp.set_seed(seed)
    dp.apply_service(Frontend(id, vip, port, 6, "maglev"), backends, table)
    dp.applied(); dp.usage(); dp.close()

Frontend is the agent's service model (nodeagent.service), exported here with the types
apply_service takes. The backend role's tc data plane is nat.NatDataplane.
"""

from weir.nodeagent.dataplane.dataplane import Dataplane
from weir.nodeagent.dataplane.model import (
    AppliedService,
    BackendTarget,
    CapacityError,
    DataplaneConfig,
    DataplaneError,
    MapUsage,
)
from weir.nodeagent.service import Frontend

__all__ = [
    "AppliedService",
    "BackendTarget",
    "CapacityError",
    "Dataplane",
    "DataplaneConfig",
    "DataplaneError",
    "Frontend",
    "MapUsage",
]
