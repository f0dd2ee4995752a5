"""BGPAdvertisement status: one condition, Accepted, says whether all of it is applied.

    status:
      conditions:
        - type: Accepted
          status: "False"
          reason: AttributeRefused
          message: "localPref 200 applies to iBGP peers only; not sent to the eBGP peer
            tor-a (use med or asPathPrepend to steer an eBGP peer)"
          observedGeneration: 2
          lastTransitionTime: "2026-01-01T10:00:00Z"

True (reason Accepted) while every attribute goes to every peer the advertisement selects;
False otherwise, the reason saying which part of Weir refused what:
- Invalid: the object does not parse; nothing is announced through it.
- AttributeRefused: the controller refuses an attribute towards a peer (localPref to an eBGP
  peer, asPathPrepend to an iBGP one); the route goes to that peer without it.
- NotAnnounced: an agent cannot announce what the advertisement asks for (a setting it cannot
  use, a route ExaBGP refused); the message names the node.
The message lists the problems, the most serious first (MAX_NAMED; the rest counted): the
same lines `weirctl errors` shows against the object, each clipped to its share of the
32768 characters a condition message holds (so a value quoted whole cannot make the
written message differ from the verdict, and a new leader rewrite it).

Only the leader writes. The controller's problems come from the last reduce, together with
the generation of each object it read (observedGeneration); the agents' from the agents
connected to the leader (with several replicas, an agent connected to another one has its
problems in that replica's `weirctl errors` and in the BGPPeer status, not here).

A write is a JSON merge patch of status.conditions carrying the resourceVersion listed just
before, made only when the condition differs from the object's (status, reason, message,
observedGeneration): a new leader, or a restart, writes nothing while all is as it should
be, and an object deleted meanwhile is skipped. Passes run at most once per `min_interval`;
a 409 is retried at once from a fresh list (a few times), then on the next pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weir.common.aio import wait_any
from weir.common.logs import clip, get_logger
from weir.common.pb import pb
from weir.controller.core.crds import BGP_ADVERTISEMENT
from weir.controller.core.publish import Publisher, Reduced
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import BGP_ADVERTISEMENTS, KubeAPI, WriteFailure, write
from weir.controller.kube.conditions import MAX_MESSAGE, condition, find
from weir.controller.kube.statuswrite import due_and_listed, retried
from weir.controller.plane.records import agent_errors
from weir.controller.plane.servicer import NodePlane

log = get_logger("weir.adstatus")

ACCEPTED = "Accepted"
# Reasons, the most serious first: the condition takes the first one that applies.
INVALID = "Invalid"
REFUSED = "AttributeRefused"
NOT_ANNOUNCED = "NotAnnounced"
RANKS = (INVALID, REFUSED, NOT_ANNOUNCED)
ALL_APPLIED = "every attribute is applied to every peer this advertisement selects"
MAX_NAMED = 10  # problems named in a message; the rest are counted
# Each problem is clipped to its share of a condition's message (a user's value quoted
# whole could be longer): what is written is then the verdict as it is, not cut short.
PROBLEM_CHARS = (MAX_MESSAGE - 64) // MAX_NAMED


@dataclass(frozen=True)
class Verdict:
    """The Accepted condition an advertisement should carry, but its transition time."""

    generation: int
    status: str
    reason: str
    message: str
    uid: str = ""  # the object it is about: one re-created under its name needs it again

    def shown_by(self, cond: Mapping[str, Any] | None) -> bool:
        """Whether a condition as read says the same."""
        return cond is not None and (
            cond.get("status"),
            cond.get("reason"),
            cond.get("message"),
            cond.get("observedGeneration") or 0,
        ) == (self.status, self.reason, self.message, self.generation)


def verdict(generation: int, problems: Iterable[tuple[str, str]], uid: str = "") -> Verdict:
    """From (reason, message) pairs: True without any, else the most serious reason."""
    found = sorted(
        {(r, clip(m, PROBLEM_CHARS)) for r, m in problems}, key=lambda p: (RANKS.index(p[0]), p[1])
    )
    if not found:
        return Verdict(generation, "True", ACCEPTED, ALL_APPLIED, uid)
    message = "; ".join(m for _, m in found[:MAX_NAMED])
    if len(found) > MAX_NAMED:
        message += f" (and {len(found) - MAX_NAMED} more)"
    return Verdict(generation, "False", found[0][0], message, uid)


def verdicts(
    reduced: Reduced | None,
    rejected: Iterable[tuple[Mapping[str, Any], pb.ObjectError]],
    from_agents: Iterable[pb.ObjectError],
) -> dict[str, Verdict]:
    """Each advertisement's condition, by name: those of the last reduce, and those that do
    not parse now (newer than any reduce). Nothing before the first reduce."""
    if reduced is None:
        return {}
    problems: dict[str, list[tuple[str, str]]] = {}
    for e in reduced.errors:
        if e.kind == BGP_ADVERTISEMENT:
            problems.setdefault(e.name, []).append((REFUSED, e.message))
    for e in from_agents:
        if e.kind == BGP_ADVERTISEMENT:
            for name in e.name.split(","):  # a route made of several advertisements
                problems.setdefault(name, []).append((NOT_ANNOUNCED, e.message))
    out = {
        name: verdict(ad.generation, problems.get(name, ()), ad.uid)
        for name, ad in reduced.inputs.bgp_advertisements.items()
    }
    for raw, error in rejected:
        meta = raw.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        generation, uid = meta.get("generation"), meta.get("uid")
        out[error.name] = verdict(
            generation if isinstance(generation, int) and generation > 0 else 0,
            [(INVALID, f"{clip(error.message, PROBLEM_CHARS - 10)}; not used")],
            uid if isinstance(uid, str) else "",
        )
    return out


class AdvertisementStatusWriter:
    """Leader-only loop; see the module docstring."""

    def __init__(
        self,
        api: KubeAPI,
        state: ClusterState,
        publisher: Publisher,
        plane: NodePlane,
        *,
        min_interval: float = 2.0,
    ) -> None:
        self.api, self.state, self.publisher, self.plane = api, state, publisher, plane
        self.min_interval = min_interval
        self.quick_retries = 3  # then the next pass, min_interval later
        self._written: dict[str, Verdict] = {}  # what the objects are known to show

    async def run(self) -> None:
        """Write the conditions that changed, until cancelled (on the leader)."""
        log.info("BGPAdvertisement status writer running")
        self._written = {}  # another leader may have written since this one last did
        while True:
            await self._wait_changed()
            await retried(self.write_changed, self.quick_retries)
            await asyncio.sleep(self.min_interval)

    async def _wait_changed(self) -> None:
        while True:
            marks = [(g, g.value) for g in (self.publisher.reductions, self.plane.changes)]
            if self.desired() != self._written:  # also forgets the deleted ones
                return
            await wait_any(marks)

    def desired(self) -> dict[str, Verdict]:
        agents = agent_errors(self.plane.list_agents().agents)
        return verdicts(self.publisher.reduced, self.state.rejected(BGP_ADVERTISEMENT), agents)

    async def write_changed(self) -> bool:
        """Write the conditions that differ from what was last written; False when some
        write failed (or lost a race: the next pass retries from a fresh list)."""
        desired = self.desired()
        found = await due_and_listed(self.api, BGP_ADVERTISEMENTS, desired, self._written, None)
        if found is None:
            return False
        todo, objs = found
        ok = True
        for name, v in sorted(todo.items()):
            obj = objs.get(name)
            if obj is None or await self._write(obj, v):  # None: deleted meanwhile
                self._written[name] = v
            else:
                ok = False
        return ok

    async def _write(self, obj: Mapping[str, Any], v: Verdict) -> bool:
        """Set the condition on obj if obj still is as listed; True when done or not needed."""
        meta = obj["metadata"]
        name = meta["name"]
        conditions = (obj.get("status") or {}).get("conditions")
        old = find(conditions, ACCEPTED)
        if v.shown_by(old):
            return True
        if v.uid and meta.get("uid") != v.uid:
            return True  # re-created under this name: its own verdict comes with a reduce
        if old is not None and (old.get("observedGeneration") or 0) > v.generation:
            return True  # another leader saw a newer spec: this one's reduce catches up
        others = [c for c in conditions or () if c is not old]
        patch = {
            "metadata": {"resourceVersion": meta["resourceVersion"]},
            "status": {
                "conditions": [
                    *others,
                    condition(ACCEPTED, v.status, v.reason, v.message, old, v.generation),
                ]
            },
        }
        call = self.api.patch(BGP_ADVERTISEMENTS, "", name, patch, subresource="status")
        done = await write(call, f"BGPAdvertisement {name}")
        if done is WriteFailure.GONE:
            return True
        if isinstance(done, WriteFailure):
            return False
        log.info(
            "BGPAdvertisement condition written",
            advertisement=name,
            accepted=v.status,
            reason=v.reason,
            message=v.message,
        )
        return True
