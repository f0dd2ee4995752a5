"""Generate the Python gRPC stubs from proto/ next to the .proto files (idempotent)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"


def main() -> int:
    status = 0
    for src in sorted(PROTO.rglob("*.proto")):
        out = src.with_name(src.stem + "_pb2.py")
        if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
            continue
        args = [
            "protoc",
            f"-I{PROTO}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={PROTO}",
            f"--pyi_out={PROTO}",
            f"--grpc_python_out={PROTO}",
            str(src),
        ]
        if protoc.main(args) != 0:
            print(f"protoc failed for {src}", file=sys.stderr)
            status = 1
    # Packages for the generated modules (namespace packages would not map through
    # setuptools' package-dir in non-editable installs).
    for d in [p for p in (PROTO / "weir").rglob("*") if p.is_dir()] + [PROTO / "weir"]:
        (d / "__init__.py").touch()
    return status


if __name__ == "__main__":
    sys.exit(main())
