#!/usr/bin/env bash
# Installs the `nft` binary (Debian's `nftables` package), which the node agent's SNAT code drives
# through the nftables crate's JSON API, and which node-agent/tests/t40_host_netns.rs needs.
# Idempotent and quiet: when `nft` is already on PATH this does nothing. Needs root and apt-get.
set -euo pipefail

if command -v nft >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-nft: nft is missing; install Debian's nftables package (apt-get install nftables) as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# An image with empty package lists cannot install anything: update them only when needed.
if ! apt-get install -y -qq --no-install-recommends nftables >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends nftables >/dev/null
fi

command -v nft >/dev/null 2>&1 || {
    echo "install-nft: nftables was installed but nft is not on PATH" >&2
    exit 1
}
