"""The `weir` package: the repository's folders mapped into one import namespace.

The repository keeps its design-card layout (controller/, nodeagent/, bpf/, ...); an install
(wheel or editable) maps each folder under `weir`, ships bpf/'s C sources as package data,
and builds the C extensions: the Maglev populator and the TCP health checks.
"""

from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
# import name -> folder. proto/weir holds the package root and the generated stubs.
PACKAGE_DIRS = {
    "weir": "proto/weir",
    "weir.common": "common",
    "weir.controller": "controller",
    "weir.nodeagent": "nodeagent",
    "weir.bpf": "bpf",
    "weir.ctl": "weirctl",
    "weir.lab": "lab",
}


def packages() -> list[str]:
    found = []
    for name, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if rel.parts and PACKAGE_DIRS.get(".".join((name, *rel.parts))) is not None:
                continue
            found.append(".".join((name, *rel.parts)))
    return sorted(set(found))


setup(
    packages=packages(),
    package_dir=PACKAGE_DIRS,
    package_data={"weir.bpf": ["*.c", "*.h"], "weir": ["py.typed"]},
    ext_modules=[
        Extension(
            "weir.nodeagent._maglev",
            sources=["nodeagent/_maglev.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        Extension(
            "weir.nodeagent.health._tcpcheck",
            sources=["nodeagent/health/_tcpcheck.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
        ),
    ],
)
