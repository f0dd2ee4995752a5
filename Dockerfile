# The Weir image: weir-controller, weir-agent and weirctl.
#   docker build -t weir:0.2.0 .
# Debian 12, like the development machines: the agent uses Debian's python3-bpfcc (the PyPI
# package named "bcc" is unrelated). bcc compiles the programs on the node against kernel
# headers the image carries (the headers stage, BCC_KERNEL_SOURCE): nothing comes from the
# host's /usr/src or /lib/modules, so nodes without headers (Talos, Flatcar, Bottlerocket,
# COS, minimal cloud images) run it. Minimum kernel: 5.18 (deploy/README.md).
#
# The image takes the path tests/packaging/test_wheel.py checks: the build stage's COPY lines
# are the wheel's sources, the gRPC stubs are generated into proto/weir, the wheel is built
# and installed into a venv that sees Debian's system site packages.

FROM debian:12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py ./
COPY scripts/gen_proto.py scripts/gen_proto.py
COPY proto proto
COPY common common
COPY controller controller
COPY nodeagent nodeagent
COPY weirctl weirctl
COPY lab lab
COPY bpf bpf
# The stubs are generated, not committed: protoc (grpcio-tools) runs in a throwaway venv.
RUN python3 -m venv /build \
 && /build/bin/pip install --no-cache-dir \
      "grpcio-tools==$(sed -n 's/.*"grpcio-tools==\([0-9.]*\)".*/\1/p' pyproject.toml)" \
 && /build/bin/python scripts/gen_proto.py \
 && /build/bin/pip wheel --no-cache-dir --no-deps -w /dist .
# A venv that sees the system site packages, so the runtime stage's python3-bpfcc is found.
RUN python3 -m venv --system-site-packages /opt/weir \
 && /opt/weir/bin/pip install --no-cache-dir "$(ls /dist/weir-*.whl)[bgp]"

# Debian's kernel headers, unpacked rather than installed (installing them pulls in gcc), and
# made into one tree by the script tests/packaging/test_wheel.py runs on the same packages.
FROM debian:12-slim AS headers
COPY scripts/kernel_headers.sh /usr/local/bin/kernel_headers.sh
RUN apt-get update && mkdir /tmp/headers && cd /tmp/headers \
 && arch=$(dpkg --print-architecture) \
 && pkg=$(apt-cache depends "linux-headers-$arch" | sed -n 's/.*Depends: \(linux-headers-.*\)/\1/p' | head -n 1) \
 && apt-get download "$pkg" "${pkg%-$arch}-common" \
 && for deb in *.deb; do dpkg-deb -x "$deb" .; done \
 && sh /usr/local/bin/kernel_headers.sh /tmp/headers /opt/weir/kernel-headers \
 && rm -rf /tmp/headers /var/lib/apt/lists/*

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/weir /opt/weir
COPY --from=headers /opt/weir/kernel-headers /opt/weir/kernel-headers
ENV PATH=/opt/weir/bin:$PATH PYTHONUNBUFFERED=1
ENV BCC_KERNEL_SOURCE=/opt/weir/kernel-headers
# The controller runs as this user; the agent's DaemonSet runs as root with BPF capabilities.
USER 65532:65532
ENTRYPOINT []
CMD ["weir-controller", "--help"]
