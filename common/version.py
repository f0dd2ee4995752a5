"""Weir's release, from the installed package's metadata, and which agent releases a
controller serves.

A controller serves agents of its own major version and of its minor version, one before and
one after (a rolling upgrade has both for a while, in either order), and none before
OLDEST_AGENT: agents before 0.2 hash views without their NodeConfig and would refuse every
version a newer controller sends. An agent that states no release number is served (tools and
tests that speak the protocol by hand).
"""

from __future__ import annotations

import re
from importlib import metadata

from weir.common.logs import clip

OLDEST_AGENT = (0, 2)
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def _installed() -> str:
    try:
        return metadata.version("weir")
    except metadata.PackageNotFoundError:  # run from a checkout without an install
        return "0.0.0+unknown"


VERSION = _installed()


def release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string, or None when it is not one."""
    found = _RELEASE.match(version.strip().lstrip("v"))
    return (int(found[1]), int(found[2])) if found else None


def served_range(controller: str = VERSION) -> tuple[tuple[int, int], tuple[int, int]]:
    """The oldest and newest (major, minor) of the agents a controller release serves."""
    major, minor = release(controller) or (0, 0)
    oldest = max((major, max(minor - 1, 0)), min(OLDEST_AGENT, (major, minor)))
    return oldest, (major, minor + 1)


def describe_range(controller: str = VERSION) -> str:
    (a, b), (c, d) = served_range(controller)
    return f"{a}.{b}.x to {c}.{d}.x"


def agent_refusal(agent: str, controller: str = VERSION) -> str | None:
    """Why a controller of this release does not serve an agent of that one (None: it does)."""
    found = release(agent)
    oldest, newest = served_range(controller)
    if found is None or oldest <= found <= newest:
        return None
    advice = "upgrade the agents" if found < oldest else "upgrade the controller first"
    return (
        f"agent {clip(agent, 32)} is not served by controller {controller}, which serves agents "
        f"{describe_range(controller)}: {advice} (deploy/README.md, Versions and upgrades)"
    )
