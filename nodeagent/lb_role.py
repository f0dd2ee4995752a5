"""The load-balancer role: XDP and BGP, on the nodes the controller selects for it.

The role follows the view's NodeConfig.load_balancer (or, from a controller that predates
node roles, the view carrying services: nodeagent.service.node_from_pb). Its data plane
(XDP on the uplink) is opened at the first version that gives the node the role, never
before: an agent that never gets the role never attaches XDP. An earlier agent's pins count
as having had the role: they are taken over at the first version and reconciled with it.

Applying a version is the balancer's job (nodeagent.balancer); keeping backend MACs right
between versions is mac_upkeep's, and checking every second that the XDP program is still
attached (every route withdrawn while it is not; put back when nothing else took its place)
is forwarding_watch's: both run once the data plane is open.

Losing the role: the balancer is handed no services, so it removes them all and announces
nothing (BGP withdraws every VIP). XDP stays attached and the data plane open: with no
service it passes every packet to the kernel, and taking the role back needs no reload.

Should the data plane fail to open (no bcc, a foreign pin layout), every service of the
view is reported with the reason, and the next version tries again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.nodeagent.attachment import Probe, XdpAttachment
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.balancer import Balancer
from weir.nodeagent.bgp.hook import BGPHook
from weir.nodeagent.dataplane import Dataplane
from weir.nodeagent.forwarding_watch import ForwardingWatch
from weir.nodeagent.mac_upkeep import MacUpkeep
from weir.nodeagent.maglev import TableCache
from weir.nodeagent.roles import RoleStatus, UplinkSource
from weir.nodeagent.service import Desired

log = get_logger("weir.agent")


class LoadBalancerRole:
    name = "load_balancer"

    def __init__(
        self,
        open_dataplane: Callable[[], Dataplane],  # blocks: called in a worker thread
        macs: BackendMacs,
        *,
        uplink: UplinkSource | None = None,
        pinned: bool = False,  # an earlier agent's data plane is pinned: take it over
        tables: TableCache | None = None,
        bgp: BGPHook | None = None,
        changes: Generation | None = None,
        retry: float = 2.0,  # mac_upkeep's periods
        refresh: float = 30.0,
        attachment: Callable[[Dataplane], Probe] = XdpAttachment,
        check_interval: float = 1.0,  # forwarding_watch's period
    ) -> None:
        self._open_dataplane = open_dataplane
        self._macs = macs
        self._uplink = uplink
        self._pinned = pinned
        self._tables = tables or TableCache()
        self._bgp = bgp
        self._changes = changes
        self._upkeep = (retry, refresh)
        self._attachment = attachment
        self._check_interval = check_interval
        self.dataplane: Dataplane | None = None
        self.balancer: Balancer | None = None
        self._opened = asyncio.Event()
        self._active = False
        self._open_error: str | None = None
        self._failed: dict[str, str] = {}  # every service, while the data plane cannot open

    @property
    def active(self) -> bool:
        """The last version gave this node the role."""
        return self._active

    @property
    def mode(self) -> str:
        return f"xdp-{self.dataplane.xdp_mode}" if self.dataplane is not None else ""

    async def apply(self, desired: Desired) -> Mapping[str, int]:
        wanted = desired.node.load_balancer
        if wanted != self._active:
            log.info(
                "load-balancer role taken"
                if wanted
                else "load-balancer role lost: no services, nothing announced, XDP stays attached",
                version=desired.version,
            )
            self._active = wanted
        if self.balancer is None:
            if not (wanted or self._pinned):
                return {}
            try:
                await self.open()
            except Exception as exc:  # DataplaneError, bcc's bare Exception
                self._open_error = f"cannot open the load-balancer data plane: {exc}"
                log.error("load-balancer data plane not opened", error=str(exc))
                self._failed = dict.fromkeys(desired.services, self._open_error)
                return {"failed": len(self._failed)}
        self._open_error = None
        self._failed = {}
        assert self.balancer is not None
        served = desired if wanted else dataclasses.replace(desired, services={})
        return (await self.balancer.apply(served)).counts()

    async def open(self) -> None:
        """Open the data plane and adopt what its pins hold (apply does on first need)."""
        if self.balancer is not None:
            return
        dp = await asyncio.to_thread(self._open_dataplane)
        balancer = Balancer(
            dp,
            self._macs,
            uplink=self._uplink,
            tables=self._tables,
            bgp=self._bgp,
            changes=self._changes,
        )
        try:
            await balancer.adopt()
        except BaseException:
            await asyncio.to_thread(dp.close)
            raise
        self.dataplane, self.balancer = dp, balancer
        log.info("load-balancer data plane open", xdp_mode=dp.xdp_mode)
        self._opened.set()

    def errors(self) -> dict[str, str]:
        if self.balancer is None:
            return dict(self._failed)
        return self.balancer.errors()

    def counts(self) -> tuple[int, int, int]:
        if self.balancer is None:
            return 0, len(self._failed), 0
        return self.balancer.counts()

    async def status(self) -> RoleStatus:
        if self.balancer is None:
            return RoleStatus(problem=self._open_error or "", errors=self.errors())
        return await self.balancer.status()

    async def run(self) -> None:
        """Backend MAC upkeep and the XDP program's check, from the moment the data plane
        is open, until cancelled."""
        await self._opened.wait()
        assert self.balancer is not None and self.dataplane is not None
        retry, refresh = self._upkeep
        upkeep = MacUpkeep(self.balancer, self._macs, retry=retry, refresh=refresh)
        watch = ForwardingWatch(
            self._attachment(self.dataplane),
            self.balancer.set_forwarding,
            role=self.name,
            interval=self._check_interval,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(upkeep.run(), name="mac-upkeep")
            tg.create_task(watch.run(), name="xdp-watch")

    async def close(self) -> None:
        """Release the data plane; XDP stays attached and the maps pinned."""
        if self.dataplane is not None:
            await asyncio.to_thread(self.dataplane.close)
            self.dataplane = self.balancer = None
