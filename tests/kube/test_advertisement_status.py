"""The Accepted condition on BGPAdvertisements: the Kubernetes source feeds the state, the real
publisher reduces it (refusing localPref towards eBGP peers and prepends towards iBGP ones),
agents report to a real NodePlane what they cannot announce, and AdvertisementStatusWriter
writes the condition into the status subresource of the fake API server (with the CRD from
deploy/, whose schema it enforces) through the real client: only on change, rate-limited,
retried after a 409, and never for an object deleted meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from weir.common.pb import pb
from weir.controller.core.publish import Publisher
from weir.controller.core.reduce import ReduceConfig
from weir.controller.kube.adstatus import (
    ALL_APPLIED,
    MAX_NAMED,
    AdvertisementStatusWriter,
    Verdict,
    verdict,
)
from weir.controller.kube.api import KubeAPI
from weir.controller.kube.conditions import MAX_MESSAGE

from tests.controller.plane_support import Plane

from . import builders as b
from .fakeapi import FakeKubeAPI
from .harness import Harness, accepted
from .harness import advertisement_writes as writes

pytestmark = pytest.mark.timeout(60)

MIN_INTERVAL = 0.1


@dataclass
class Controller:
    """The leader's parts that the writer reads, with the writer not started yet."""

    harness: Harness
    plane: Plane
    publisher: Publisher
    writer: AdvertisementStatusWriter

    def start_writer(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.writer.run())


@pytest.fixture
async def ctl(fake: FakeKubeAPI, kube: KubeAPI) -> AsyncIterator[Controller]:
    fake.create(b.node("lb-1", "10.0.0.1"))
    fake.create(b.peer("tor", "10.0.0.254", peer_asn=65000, local_asn=65001))  # eBGP
    fake.create(b.peer("core", "10.0.0.253", peer_asn=65001, local_asn=65001))  # iBGP
    h = Harness(kube)
    await h.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with Plane() as plane:
            config = ReduceConfig(maglev_seed=1, vips_from_annotation=False)
            publisher = Publisher(h.state, plane.store, config, debounce=0.01)
            tasks.append(asyncio.create_task(publisher.run()))
            writer = AdvertisementStatusWriter(
                kube, h.state, publisher, plane.plane, min_interval=MIN_INTERVAL
            )
            c = Controller(h, plane, publisher, writer)
            try:
                yield c
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await h.stop()


@contextlib.asynccontextmanager
async def running(c: Controller) -> AsyncIterator[None]:
    task = c.start_writer()
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def generation(fake: FakeKubeAPI, name: str) -> int:
    return fake.get(b.WEIR, "BGPAdvertisement", "", name)["metadata"]["generation"]


async def until_reduced(c: Controller, predicate: Any) -> None:
    """Until the last published reduce satisfies predicate(reduced)."""
    async with asyncio.timeout(10):
        while c.publisher.reduced is None or not predicate(c.publisher.reduced):
            await c.publisher.reductions.wait_past(c.publisher.reductions.value)


async def test_local_pref_towards_an_ebgp_peer_is_refused_until_removed(
    fake: FakeKubeAPI, ctl: Controller
) -> None:
    fake.create(b.advertisement("steer", localPref=200, med=50))  # to tor (eBGP) and core
    fake.create(b.advertisement("inside", localPref=300, peers=["core"]))  # iBGP only
    fake.create(b.advertisement("prepend", asPathPrepend=2))  # to tor and core (iBGP)
    async with running(ctl):
        await fake.wait_until(
            lambda: all(accepted(fake, n) for n in ("steer", "inside", "prepend"))
        )
        steer = accepted(fake, "steer")
        assert (steer["status"], steer["reason"], steer["observedGeneration"]) == (
            "False",
            "AttributeRefused",
            1,
        )
        assert steer["message"] == (
            "localPref 200 applies to iBGP peers only; not sent to the eBGP peer tor (use med "
            "or asPathPrepend to steer an eBGP peer)"
        )
        inside = accepted(fake, "inside")
        assert (inside["status"], inside["reason"]) == ("True", "Accepted")
        prepend = accepted(fake, "prepend")
        assert (prepend["status"], prepend["reason"]) == ("False", "AttributeRefused")
        assert "asPathPrepend" in prepend["message"] and "iBGP peer core" in prepend["message"]

        # The user fixes the object: a new generation, accepted.
        fake.patch(b.WEIR, "BGPAdvertisement", "", "steer", {"spec": {"localPref": None}})
        assert generation(fake, "steer") == 2
        await fake.wait_until(lambda: accepted(fake, "steer").get("status") == "True")
        steer = accepted(fake, "steer")
        assert (steer["reason"], steer["observedGeneration"]) == ("Accepted", 2)
        assert steer["lastTransitionTime"]

        # Settled: its own writes (status only, no new generation) start no further write.
        settled = writes(fake)
        await asyncio.sleep(5 * MIN_INTERVAL)
        assert writes(fake) == settled == 4

    # A new leader (or a restart) finds every condition right and writes nothing.
    fresh = AdvertisementStatusWriter(
        ctl.writer.api, ctl.harness.state, ctl.publisher, ctl.plane.plane
    )
    assert await fresh.write_changed()
    assert writes(fake) == settled


async def test_what_agents_cannot_announce_is_shown(fake: FakeKubeAPI, ctl: Controller) -> None:
    fake.create(b.advertisement("a", communities=["65000:1"]))
    fake.create(b.advertisement("b", med=10))
    refused = "192.0.2.1/32 to peer tor: ExaBGP refused the announcement"
    async with running(ctl):
        await fake.wait_until(lambda: accepted(fake, "a").get("status") == "True")
        await fake.wait_until(lambda: accepted(fake, "b").get("status") == "True")
        agent = ctl.plane.agent("lb-1")
        # The route was made of both advertisements: both are named.
        agent.report_status(
            pb.NodeStatus(
                bgp_errors=[pb.ObjectError(kind="BGPAdvertisement", name="a,b", message=refused)]
            )
        )
        for name in ("a", "b"):
            await fake.wait_until(lambda n=name: accepted(fake, n).get("status") == "False")
            cond = accepted(fake, name)
            assert (cond["reason"], cond["message"]) == ("NotAnnounced", f"node lb-1: {refused}")
        agent.report_status(pb.NodeStatus())
        await fake.wait_until(lambda: accepted(fake, "a").get("status") == "True")
        await fake.wait_until(lambda: accepted(fake, "b").get("status") == "True")


async def test_an_object_that_does_not_parse_is_invalid(fake: FakeKubeAPI, ctl: Controller) -> None:
    # The CRD takes any string as a community; the controller's parser does not.
    fake.create(b.advertisement("typo", communities=["no-exprot"]))
    async with running(ctl):
        await fake.wait_until(lambda: accepted(fake, "typo").get("status") == "False")
        cond = accepted(fake, "typo")
        assert cond["reason"] == "Invalid"
        assert "spec.communities[0]" in cond["message"] and "no-exprot" in cond["message"]
        assert cond["message"].endswith("; not used")
        fake.patch(b.WEIR, "BGPAdvertisement", "", "typo", {"spec": {"communities": ["no-export"]}})
        await fake.wait_until(lambda: accepted(fake, "typo").get("status") == "True")
        assert accepted(fake, "typo")["observedGeneration"] == 2


async def test_a_lost_race_is_written_again_and_a_deleted_object_is_skipped(
    fake: FakeKubeAPI, ctl: Controller
) -> None:
    fake.create(b.advertisement("steer", localPref=200))
    # Conflicts: retried at once from a fresh list, not a whole min_interval later.
    fake.fail_requests(409, 2, verb="patch", resource="bgpadvertisements")
    ctl.writer.min_interval = 30
    async with running(ctl):
        await fake.wait_until(lambda: accepted(fake, "steer").get("status") == "False", within=5)
    assert writes(fake, "steer") == 1

    assert await ctl.writer.write_changed()  # the status is known as written
    assert writes(fake, "steer") == 1

    # Deleted and made again at once (same name, spec and generation; the writer saw no
    # reduce without it): the new object gets its condition too.
    fake.delete(b.WEIR, "BGPAdvertisement", "", "steer")
    uid = fake.create(b.advertisement("steer", localPref=200))["metadata"]["uid"]
    await until_reduced(
        ctl, lambda r: getattr(r.inputs.bgp_advertisements.get("steer"), "uid", "") == uid
    )
    assert await ctl.writer.write_changed()
    assert accepted(fake, "steer")["status"] == "False" and writes(fake, "steer") == 2

    # Deleted between the list and the write: nothing to write, and no failure.
    listed = fake.get(b.WEIR, "BGPAdvertisement", "", "steer")
    fake.delete(b.WEIR, "BGPAdvertisement", "", "steer")
    assert await ctl.writer._write(listed, Verdict(1, "True", "Accepted", "all"))
    await until_reduced(ctl, lambda r: "steer" not in r.inputs.bgp_advertisements)
    assert await ctl.writer.write_changed()
    assert writes(fake, "steer") == 2


def test_the_message_puts_the_most_serious_problem_first_and_is_bounded() -> None:
    problems = [("NotAnnounced", f"node lb-{i:02}: refused") for i in range(12)]
    problems += [("AttributeRefused", "localPref 200 ... eBGP peer tor"), problems[0]]
    v = verdict(3, problems)
    assert (v.generation, v.status, v.reason) == (3, "False", "AttributeRefused")
    named = v.message.split("; ")
    assert named[0] == "localPref 200 ... eBGP peer tor" and named[1] == "node lb-00: refused"
    assert len(named) == MAX_NAMED and v.message.endswith("node lb-08: refused (and 3 more)")
    assert verdict(4, []) == Verdict(4, "True", "Accepted", ALL_APPLIED)


async def test_a_huge_invalid_value_still_gets_its_condition(
    fake: FakeKubeAPI, ctl: Controller
) -> None:
    # The CRD bounds no community's length; a condition's message is at most 32768
    # characters, and the message must say the same once clipped.
    fake.create(b.advertisement("huge", communities=["x" * 40000]))
    async with running(ctl):
        await fake.wait_until(lambda: accepted(fake, "huge").get("status") == "False")
    cond = accepted(fake, "huge")
    assert cond["reason"] == "Invalid" and "spec.communities[0]" in cond["message"]
    assert len(cond["message"]) <= MAX_MESSAGE and cond["message"].endswith("; not used")
    assert writes(fake, "huge") == 1
    # A new leader finds it right as written (clipped), and writes nothing.
    fresh = AdvertisementStatusWriter(
        ctl.writer.api, ctl.harness.state, ctl.publisher, ctl.plane.plane
    )
    assert await fresh.write_changed()
    assert writes(fake, "huge") == 1


def test_the_message_is_bounded_however_long_each_problem_is() -> None:
    problems = [("NotAnnounced", f"node lb-{i:02}: " + "y" * 9000) for i in range(MAX_NAMED + 2)]
    v = verdict(1, problems)
    assert len(v.message) <= MAX_MESSAGE and v.message.endswith("(and 2 more)")
    assert v.message.count("node lb-") == MAX_NAMED  # each one named, if clipped
