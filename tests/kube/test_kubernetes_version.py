"""The oldest Kubernetes Weir supports (docs/LIMITS.md) is enforced at start: against an older
API server weir-controller exits at once with a message saying so; from that version on it
starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from weir.controller.kube.status import OLDEST_KUBERNETES, parse_kubernetes_version

from .conftest import OLDEST_SUPPORTED, serving
from .procs import ControllerProc

pytestmark = pytest.mark.timeout(60)


def test_providers_version_strings_parse() -> None:
    assert parse_kubernetes_version({"major": "1", "minor": "24+"}) == (1, 24)
    assert parse_kubernetes_version({"major": "1", "minor": "30-eks"}) == (1, 30)
    with pytest.raises(ValueError):
        parse_kubernetes_version({"major": "", "minor": "x"})
    assert OLDEST_KUBERNETES == OLDEST_SUPPORTED


async def test_an_older_api_server_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    async with serving(version=(1, 23)) as fake:
        ctl = ControllerProc(fake.write_kubeconfig(tmp_path / "kc"), tmp_path, "old")
        await ctl.start()
        try:
            assert ctl.proc is not None
            async with asyncio.timeout(30):
                code = await ctl.proc.wait()
        finally:
            await ctl.close()
        assert code != 0
        assert "Kubernetes v1.23.0-weir-fake is not supported" in ctl.logs()
        assert "the oldest Weir supports is 1.24" in ctl.logs()
