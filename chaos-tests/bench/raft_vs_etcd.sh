#!/usr/bin/env bash
# raft_vs_etcd.sh: bind+release on a 3-replica ipam-server cluster against a 3-member etcd 3.4
# cluster, in the same run, on loopback, both fsyncing.
#
# For each client count (default 1 16 64) it runs, one after the other, each for --duration:
#   1. loadgen     bind+release pairs on the ipam-server cluster
#   2. etcd_bench  raw-put: one Put of a unique key per op (etcd's ceiling)
#   3. etcd_bench  cas-alloc: alloc+release through a compare-and-swap on one /16 pool key
#                  (Whereabouts / Calico style)
# and prints a markdown table with ops/s, p50, p99 and the ratios ours / etcd.
#
# Usage: chaos-tests/bench/raft_vs_etcd.sh [--duration 20s] [--clients "1 16 64"]
#            [--etcd-only] [--results DIR] [--data-root DIR] [--keep]
#
# Needs root (or sudo-less apt) only to install Debian's etcd-server when `etcd` is missing.
# Not a test and not run in CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION=20s
CLIENTS="1 16 64"
ETCD_ONLY=0
KEEP=0
RESULTS=""
DATA_ROOT="${TMPDIR:-/var/tmp}"
COMMAND_LINE="$(printf '%q ' "$0" "$@")"
COMMAND_LINE="${COMMAND_LINE% }"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --etcd-only) ETCD_ONLY=1; shift ;;
        --results) RESULTS="$2"; shift 2 ;;
        --data-root) DATA_ROOT="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[raft_vs_etcd] $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v jq >/dev/null || die "jq is needed to read the JSON reports (apt-get install -y jq)"

WORK="$(mktemp -d "${DATA_ROOT%/}/raft-vs-etcd.XXXXXX")"
RESULTS="${RESULTS:-$ROOT/target/raft_vs_etcd/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$KEEP" == 1 ]]; then
        log "kept the data and logs in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- etcd -------------------------------------------------------------------------------------

ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)
ETCD_ENDPOINTS="127.0.0.1:${ETCD_CLIENT_PORTS[0]},127.0.0.1:${ETCD_CLIENT_PORTS[1]},127.0.0.1:${ETCD_CLIENT_PORTS[2]}"

ensure_etcd() {
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        log "installing Debian's etcd-server and etcd-client"
        DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client >&2
    fi
    ETCD_VERSION="$(etcd --version | awk '/^etcd Version:/ { print $3 }')"
    log "etcd version $ETCD_VERSION"
    [[ "$ETCD_VERSION" == 3.4.* ]] || die "etcd $ETCD_VERSION is not 3.4.x"
}

start_etcd() {
    local cluster="" i
    for i in 0 1 2; do
        cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
    done
    for i in 0 1 2; do
        # No --unsafe-no-fsync: etcd fsyncs its WAL before acknowledging, as ipam-server does.
        etcd --name "e$((i + 1))" \
            --data-dir "$WORK/etcd$((i + 1))" \
            --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
            --initial-cluster "$cluster" \
            --initial-cluster-token "raft-vs-etcd-$$" \
            --initial-cluster-state new \
            --logger zap --log-outputs stderr \
            >"$WORK/etcd$((i + 1)).log" 2>&1 &
        PIDS+=("$!")
    done
    local try
    for try in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; then
            log "etcd cluster up ($ETCD_ENDPOINTS)"
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$WORK"/etcd*.log >&2 || true
    die "etcd did not become healthy in 20 s"
}

# --- ipam-server --------------------------------------------------------------------------------
#
# ADJUST HERE when ipam-server's command line changes (check: target/release/ipam-server --help).
# Today: each replica gets --id, --listen, --data-dir and the same --peers ID=HOST:PORT list; the
# lowest id initializes the cluster on first start. /readyz on --http-listen answers 200 once
# the replica has a leader.

IPAM_SERVERS="127.0.0.1:7400,127.0.0.2:7400,127.0.0.3:7400"
IPAM_PEERS="1=127.0.0.1:7400,2=127.0.0.2:7400,3=127.0.0.3:7400"

start_ipam_cluster() {
    local bin="$TARGET_DIR/release/ipam-server"
    "$bin" --help 2>&1 | grep -q -- '--peers' \
        || die "ipam-server has no --peers flag: adjust start_ipam_cluster in $0, or run with --etcd-only"
    local i
    for i in 1 2 3; do
        "$bin" --id "$i" --listen "127.0.0.$i:7400" --http-listen "127.0.0.$i:7401" \
            --data-dir "$WORK/ipam$i" --peers "$IPAM_PEERS" \
            >"$WORK/ipam$i.log" 2>&1 &
        PIDS+=("$!")
    done
    local try ready
    for try in $(seq 1 150); do
        ready=0
        for i in 1 2 3; do
            curl -sf "http://127.0.0.$i:7401/readyz" >/dev/null 2>&1 && ready=$((ready + 1))
        done
        if [[ "$ready" == 3 ]]; then
            log "ipam-server cluster ready ($IPAM_SERVERS)"
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$WORK"/ipam*.log >&2 || true
    die "ipam-server cluster not ready in 30 s"
}

# --- the run ----------------------------------------------------------------------------------

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ensure_etcd
log "building release binaries"
if [[ "$ETCD_ONLY" == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p ipam-chaos-tests >&2)
else
    (cd "$ROOT" && cargo build --release -p ipam-chaos-tests -p ipam-server >&2)
fi
LOADGEN="$TARGET_DIR/release/loadgen"
ETCD_BENCH="$TARGET_DIR/release/etcd_bench"

log "data under $WORK ($(stat -f -c %T "$WORK")), results in $RESULTS"
start_etcd
[[ "$ETCD_ONLY" == 1 ]] || start_ipam_cluster

# One measurement: NAME COMMAND...; the JSON report goes to $RESULTS/NAME.json.
measure() {
    local name="$1"
    shift
    log "$name: $*"
    echo "$*" >"$RESULTS/$name.cmd"
    "$@" >"$RESULTS/$name.json" 2>"$RESULTS/$name.log" || {
        tail -n 20 "$RESULTS/$name.log" >&2
        die "$name failed"
    }
    tail -n 1 "$RESULTS/$name.log" >&2
    # Let compaction and fsync queues of the previous run settle.
    sleep 2
}

for c in $CLIENTS; do
    if [[ "$ETCD_ONLY" != 1 ]]; then
        measure "ipam-$c" "$LOADGEN" --servers "$IPAM_SERVERS" --clients "$c" --duration "$DURATION"
    fi
    measure "etcd-put-$c" "$ETCD_BENCH" --endpoints "$ETCD_ENDPOINTS" --mode raw-put --clients "$c" --duration "$DURATION"
    measure "etcd-cas-$c" "$ETCD_BENCH" --endpoints "$ETCD_ENDPOINTS" --mode cas-alloc --clients "$c" --duration "$DURATION"
done

# --- the table --------------------------------------------------------------------------------

field() { # FILE JQ-PATH
    if [[ -f "$1" ]]; then jq -r "$2" "$1"; else echo "-"; fi
}
ms() { # microseconds → milliseconds with 2 decimals
    if [[ "$1" == "-" ]]; then echo "-"; else awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; fi
}
ratio() {
    if [[ "$1" == "-" || "$2" == "-" || "$2" == "0" || "$2" == "0.0" ]]; then echo "-"; else
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'
    fi
}
errors() {
    if [[ -f "$1" ]]; then jq -r '[.errors[]] | add // 0' "$1"; else echo "-"; fi
}

{
    echo "Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -r); etcd $ETCD_VERSION; data on $(stat -f -c %T "$WORK")."
    echo "Command: \`$COMMAND_LINE\` (each measurement ${DURATION}; JSON reports in $RESULTS)."
    echo
    echo "| clients | ipam bind+release ops/s | p50 ms | p99 ms | etcd raw put ops/s | p50 ms | p99 ms | etcd CAS alloc+release ops/s | p50 ms | p99 ms | CAS conflicts/op | ours / raw put | ours / CAS |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for c in $CLIENTS; do
        ours="$RESULTS/ipam-$c.json"
        put="$RESULTS/etcd-put-$c.json"
        cas="$RESULTS/etcd-cas-$c.json"
        ours_ops="$(field "$ours" .ops_per_sec)"
        put_ops="$(field "$put" .ops_per_sec)"
        cas_ops="$(field "$cas" .ops_per_sec)"
        conflicts="$(field "$cas" 'if .ops > 0 then ((.counters.cas_conflicts // 0) / .ops * 100 | round / 100) else "-" end')"
        echo "| $c | $ours_ops | $(ms "$(field "$ours" .pair_p50_us)") | $(ms "$(field "$ours" .pair_p99_us)") | $put_ops | $(ms "$(field "$put" .pair_p50_us)") | $(ms "$(field "$put" .pair_p99_us)") | $cas_ops | $(ms "$(field "$cas" .pair_p50_us)") | $(ms "$(field "$cas" .pair_p99_us)") | $conflicts | $(ratio "$ours_ops" "$put_ops") | $(ratio "$ours_ops" "$cas_ops") |"
    done
    echo
    echo "Errors (failed calls after retries): $(for c in $CLIENTS; do printf 'ipam-%s=%s etcd-put-%s=%s etcd-cas-%s=%s ' "$c" "$(errors "$RESULTS/ipam-$c.json")" "$c" "$(errors "$RESULTS/etcd-put-$c.json")" "$c" "$(errors "$RESULTS/etcd-cas-$c.json")"; done)"
} | tee "$RESULTS/table.md"
