#!/usr/bin/env bash
# The benchmark report: set up, install the plotting extra, run every benchmark beside its
# baseline (bounded, about 5-8 minutes on 2 cores) and write bench/results/report.md + PNGs.
#   bash scripts/bench.sh [--quick] [--only maglev,xdp,conn,plane,reduce,disruption,tc,pods,bfd,health]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIR_VENV:-$PWD/.venv}
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$VENV/bin/pip" install -q -e ".[test,bgp,bench]"
fi
exec "$VENV/bin/python" bench/report.py "$@"
