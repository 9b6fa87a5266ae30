#!/usr/bin/env bash
# Install the Debian packages Stratus's local cloud needs on this host (idempotent, quiet when
# everything is there). Used by the README's commands; needs root.
#   debootstrap      builds the Debian base image
#   busybox-static   the tiny test image (tests), a rescue shell
#   nftables         firewall rules, elastic IPs, the metadata redirect
#   iproute2         bridge, veth pairs, network namespaces
#   util-linux       nsenter / unshare for the instance init
#   zstd, tar        image import/export
#   python3-botocore an EC2 metadata client that is not ours (tests)
#   openssl          test certificates for the agent over TLS (tests)
#   haproxy          checks the load-balancer configuration Stratus renders (tests)
#   chromium, chromium-driver  the real browser the dashboard tests drive (tests)
#   postgresql       a real PostgreSQL server for the PostgreSQL store's tests (tests)
set -euo pipefail
packages=(debootstrap busybox-static nftables iproute2 util-linux zstd tar "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "Stratus needs these Debian packages: ${missing[*]}; run as root or install them first." >&2
        exit 1
    fi
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
