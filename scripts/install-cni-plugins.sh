#!/usr/bin/env bash
# Installs Debian's containernetworking-plugins (bridge, ptp, host-local, portmap, bandwidth,
# tuning, … in /usr/lib/cni), which the CNI plugin's chaining tests and its benchmark run beside
# ours. Idempotent and quiet: does nothing when /usr/lib/cni/ptp is there. Needs root and apt-get.
set -euo pipefail

if [ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/portmap ]; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-cni-plugins: /usr/lib/cni is missing; install Debian's containernetworking-plugins as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# iptables: portmap drives it. An image with empty package lists needs an update first.
if ! apt-get install -y -qq --no-install-recommends containernetworking-plugins iptables >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends containernetworking-plugins iptables >/dev/null
fi

[ -x /usr/lib/cni/ptp ] || {
    echo "install-cni-plugins: containernetworking-plugins was installed but /usr/lib/cni/ptp is missing" >&2
    exit 1
}
