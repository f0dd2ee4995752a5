"""AgentBGP follows the controller's drain setting (BGPConfig.drain): drain without a grace
period (the node keeps forwarding while drained), resume when it is cleared. A recording
stand-in for the speaker; the real one is exercised with BIRD in test_node_drain.py."""

from __future__ import annotations

from weir.common.pb import pb
from weir.nodeagent.bgp.hook import AgentBGP


class RecordingSpeaker:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.draining = False

    async def configure(self, cfg: pb.BGPConfig) -> None:
        self.calls.append(("configure", cfg.drain))

    async def announce(self, prefixes: set[str]) -> None:
        self.calls.append(("announce", tuple(sorted(prefixes))))

    async def drain(self, grace_seconds: float) -> None:
        self.draining = True
        self.calls.append(("drain", grace_seconds))

    def resume(self) -> None:
        self.draining = False
        self.calls.append(("resume",))


async def test_drain_and_undrain_follow_the_config() -> None:
    speaker = RecordingSpeaker()
    hook = AgentBGP(speaker, grace_seconds=10)  # type: ignore[arg-type]
    vips = frozenset({"192.0.2.10"})
    await hook.apply(pb.BGPConfig(local_asn=65001), vips)
    assert speaker.calls == [("configure", False), ("announce", ("192.0.2.10",))]

    speaker.calls.clear()
    await hook.apply(pb.BGPConfig(local_asn=65001, drain=True), vips)
    # The wanted set is still handed over (remembered for the resume), then the drain.
    assert speaker.calls == [("configure", True), ("announce", ("192.0.2.10",)), ("drain", 0)]
    assert hook.draining

    speaker.calls.clear()
    await hook.apply(pb.BGPConfig(local_asn=65001, drain=True), vips)
    assert ("drain", 0) not in speaker.calls  # already draining: once is enough

    speaker.calls.clear()
    await hook.apply(pb.BGPConfig(local_asn=65001), vips)
    assert speaker.calls[-1] == ("resume",)
    assert not hook.draining
