#!/usr/bin/env bash
# Installs moto's EC2 server (PyPI `moto[server]`) into .venv/ at the repository root, for the node
# agent's EC2 adapter tests (node-agent/tests/t30_ec2_moto.rs). Idempotent and quiet: a venv that
# already has moto is left alone. Needs python3; Debian's python3 makes venvs only with the
# python3-venv package, which this installs with apt-get when it runs as root.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"

if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "install-moto: python3 is missing (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

make_venv() {
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1
}

# A venv without pip (python3-venv missing, or a run interrupted) is made again.
if [ ! -x "$venv/bin/pip" ] && ! make_venv; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install-moto: python3 cannot make a venv; install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    fi
    ver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq python3-venv >/dev/null || apt-get install -y -qq "python${ver}-venv" >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
fi

"$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
"$venv/bin/python" -c 'import moto.server' >/dev/null
