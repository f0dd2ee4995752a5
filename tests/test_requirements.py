"""tests/requirements.py: an unmet requirement skips locally and fails under CI=true, and no
test skips any other way (a bare skip would pass a CI run that did not test anything)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import require, tool

TESTS = Path(__file__).resolve().parent
MISSING = tool("weir-no-such-tool", package="nowhere")
# pytest.skip(...), pytest.importorskip(...), @pytest.mark.skip / skipif, unittest's skips.
BARE_SKIP = re.compile(r"\bpytest\.(skip|importorskip)\b|\bmark\.skip(if)?\b|\bskip(Test|If)?\(")


@pytest.mark.parametrize("ci", ["", "false"])
def test_unmet_requirement_skips_off_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="needs weir-no-such-tool"):
        require(MISSING)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_unmet_requirement_fails_on_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"needs weir-no-such-tool \(nowhere\)"):
        require(MISSING)


def test_met_requirements_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(tool(sys.executable, package="this interpreter"))


def test_requires_mark_fails_a_whole_module_on_ci(tmp_path: Path) -> None:
    """The mark, as a module's pytestmark, through tests/conftest.py's hook: every test of
    the module errors at setup (before its fixtures run) and says which requirement is missing."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_configure, pytest_runtest_setup  # noqa: F401\n"
    )
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(TESTS.parent)
    runs = {
        ci: subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**env, "CI": ci},
        )
        for ci in ("", "true")
    }
    local, ci = runs[""], runs["true"]
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout + local.stderr
    assert ci.returncode == 1 and "2 errors" in ci.stdout, ci.stdout + ci.stderr
    assert ci.stdout.count("needs weir-no-such-tool (nowhere); CI=true") == 2, ci.stdout
    assert "fixtures must not run" not in ci.stdout


PROBE = """
import pytest
from tests.requirements import requires, tool

pytestmark = requires(tool("weir-no-such-tool", package="nowhere"))


@pytest.fixture
def built():
    raise AssertionError("fixtures must not run")


def test_one(built):
    pass


def test_two():
    pass
"""


def test_no_test_skips_but_through_requirements() -> None:
    bare = [
        f"{path.relative_to(TESTS.parent)}:{n}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name not in ("requirements.py", Path(__file__).name)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if BARE_SKIP.search(line.split("#", 1)[0])
    ]
    assert not bare, "skip through tests/requirements.py (require/requires):\n" + "\n".join(bare)
