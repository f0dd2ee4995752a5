#!/bin/sh
# The kernel headers bcc compiles Weir's programs against, as the image carries them: from
# Debian's linux-headers packages unpacked (or installed) under ROOT, the newest
# linux-headers-VERSION-ARCH tree laid over its -common tree, only include/ and
# arch/KARCH/include kept. bcc reads them from $BCC_KERNEL_SOURCE. Networking programs use
# only the UAPI part of these headers, which newer kernels keep compatible, so one set
# serves every kernel from the minimum on (deploy/README.md, Requirements).
#
# The Dockerfile's headers stage runs it on the packages it unpacks;
# tests/packaging/test_wheel.py runs it on the machine's own (ROOT /) and loads the data
# plane with only the result.
#
#   kernel_headers.sh ROOT DEST
#   e.g. kernel_headers.sh /tmp/headers /opt/weir/kernel-headers
set -eu
root=$1 dest=$2
arch=$(dpkg --print-architecture)
case "$arch" in
amd64) karch=x86 ;;
arm64) karch=arm64 ;;
*) echo "kernel_headers.sh: no kernel arch known for $arch" >&2; exit 1 ;;
esac
arch_tree=$(ls -d "$root"/usr/src/linux-headers-*-"$arch" | sort -V | tail -n 1)
common=${arch_tree%-"$arch"}-common
mkdir -p "$dest/arch/$karch"
cp -a "$common/include" "$dest/"
cp -a "$common/arch/$karch/include" "$dest/arch/$karch/"
cp -a "$arch_tree/include/." "$dest/include/"
cp -a "$arch_tree/arch/$karch/include/." "$dest/arch/$karch/include/"
test -f "$dest/include/linux/kconfig.h"
