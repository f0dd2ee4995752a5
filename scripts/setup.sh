#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine, run as root: apt packages, bpffs,
# kernel-header links for bcc, a venv that sees Debian's bcc, the package and its stubs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${WEIR_VENV:-$ROOT/.venv}

log() { printf '[setup] %s\n' "$*" >&2; }

APT_PKGS=(python3-bpfcc python3-venv python3-dev gcc make linux-headers-amd64 bird2
          iproute2 iputils-ping ethtool tcpdump nftables curl python3-cryptography
          wrk nginx-light prometheus)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# bird2's package starts a system daemon we do not want; tests run their own.
systemctl disable --now bird >/dev/null 2>&1 || true
# nginx serves the benchmarks' pods from their own namespaces, not as a system service.
systemctl disable --now nginx >/dev/null 2>&1 || true
# prometheus (promtool, and the server the metrics tests run as a process of their own).
systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true

# bcc compiles against /lib/modules/$(uname -r)/build. Networking programs only need
# the UAPI headers, so Debian's headers serve a newer running kernel.
KDIR=/lib/modules/$(uname -r)
if [ ! -e "$KDIR/build" ]; then
    amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    if [ -n "$amd64" ] && [ -n "$common" ]; then
        log "linking kernel headers $amd64 for $(uname -r)"
        mkdir -p "$KDIR"
        ln -sfn "$amd64" "$KDIR/build"
        ln -sfn "$common" "$KDIR/source"
    fi
fi

if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null || log "could not mount bpffs at /sys/fs/bpf"
fi

# Debian's python3 (not a pyenv one): python3-bpfcc lives in its dist-packages.
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.weir-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ -n "$(find nodeagent -name '*.c' -newer "$stamp")" ]; then
    log "installing weir into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q "grpcio-tools==$(sed -n 's/.*"grpcio-tools==\([0-9.]*\)".*/\1/p' pyproject.toml)"
fi
# Stubs first: the package install picks up the generated `weir` package from proto/.
"$VENV/bin/python" scripts/gen_proto.py
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ -n "$(find nodeagent -name '*.c' -newer "$stamp")" ]; then
    "$VENV/bin/pip" install -q -e ".[test,bgp]"
    touch "$stamp"
fi
