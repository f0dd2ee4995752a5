#!/usr/bin/env bash
# Weir end to end on this machine (root): set it up, then build the lab in network namespaces,
# show balancing, an LB node failure and a backend removal, and remove everything again.
#   bash scripts/lab.sh [--quick] [--keep] [--routing static|bgp]     bash scripts/lab.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "down" ]; then
    bash scripts/setup.sh
fi
exec "${WEIR_VENV:-$PWD/.venv}/bin/python" -m weir.lab "$@"
