"""Suite-wide: the `requires` mark (tests/requirements.py)."""

from __future__ import annotations

import pytest

from tests.requirements import require


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*checks): skip, or fail under CI=true, when a check is unmet"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require(*mark.args)
