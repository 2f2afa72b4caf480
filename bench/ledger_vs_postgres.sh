#!/usr/bin/env bash
# ledger_vs_postgres.sh: the ledger's who-had and history against PostgreSQL 15 holding the same
# events with B-tree indexes, in one run, on one box; plus what indexing costs the write path and
# the bytes on disk per event of both.
#
#   1. write cost   ledger_bench generate on the first --prefix-events events, indexed as applied
#                   and not indexed (same seed, so the same events), each into a fresh sled; du -sb;
#                   then the unindexed copy indexed as a replica rebuilds its index (reindex), and
#                   the questions asked of the prefix as applied and of PostgreSQL holding the
#                   prefix (query), and of the rebuilt copy (query --ours-only)
#   2. the ledger   ledger_bench generate, --events events of --nodes nodes, indexed as applied
#                   (--full-ledger rebuilt: written unindexed, then reindexed); du -sb
#   3. PostgreSQL   (initdb + start first, as the postgres user, unix socket in the work directory,
#                   no TCP) ledger_bench load-postgres (binary COPY, then the indexes, VACUUM)
#   4. questions    ledger_bench query: cross-check, then who-had / history by address, pod UID
#                   and pod name on both, interleaved, and SELECT 1 as the round-trip floor
# and prints a markdown summary (also in --results DIR/summary.md).
#
# Usage: bench/ledger_vs_postgres.sh [--events 10000000] [--nodes 5000] [--prefix-events 2000000]
#            [--questions 5000] [--seed 1] [--pg-shared-buffers 1GB] [--data-root DIR]
#            [--full-ledger rebuilt|live] [--results DIR] [--skip-prefix] [--keep]
#
# --skip-prefix reuses step 1's reports from an earlier run with the same --results.
# Needs root: installs Debian's postgresql-15 when it is missing and runs PostgreSQL as the
# postgres user. The data lives under --data-root (default /var/tmp) and is removed on exit unless
# --keep; the full run takes about 20 minutes and 26 GB of disk (sled ~1.7 KB per event,
# PostgreSQL ~0.9 KB).
# Not a test and not run in CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EVENTS=10000000
NODES=5000
PREFIX_EVENTS=2000000
QUESTIONS=5000
SEED=1
PG_SHARED_BUFFERS=1GB
PG_PORT=5439
DATA_ROOT="${TMPDIR:-/var/tmp}"
RESULTS=""
KEEP=0
FULL_LEDGER=live
SKIP_PREFIX=0
COMMAND_LINE="$(printf '%q ' "$0" "$@")"
COMMAND_LINE="${COMMAND_LINE% }"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --events) EVENTS="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --prefix-events) PREFIX_EVENTS="$2"; shift 2 ;;
        --questions) QUESTIONS="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --pg-shared-buffers) PG_SHARED_BUFFERS="$2"; shift 2 ;;
        --data-root) DATA_ROOT="$2"; shift 2 ;;
        --results) RESULTS="$2"; shift 2 ;;
        --full-ledger) FULL_LEDGER="$2"; shift 2 ;;
        --skip-prefix) SKIP_PREFIX=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[ledger_vs_postgres] $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v jq >/dev/null || die "jq is needed to read the JSON reports (apt-get install -y jq)"
[[ "$FULL_LEDGER" == live || "$FULL_LEDGER" == rebuilt ]] || die "--full-ledger is live or rebuilt"
[[ "$(id -u)" == 0 ]] || die "run as root (PostgreSQL runs as the postgres user through runuser)"

PG_BIN=/usr/lib/postgresql/15/bin
WORK="$(mktemp -d "${DATA_ROOT%/}/ledger-vs-pg.XXXXXX")"
chmod 755 "$WORK"
RESULTS="${RESULTS:-$ROOT/target/ledger_vs_postgres/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
PG_STARTED=0

cleanup() {
    if [[ "$PG_STARTED" == 1 ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [[ "$KEEP" == 1 ]]; then
        log "kept the data in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- PostgreSQL 15 -------------------------------------------------------------------------------

ensure_postgres() {
    if [[ ! -x "$PG_BIN/postgres" ]]; then
        log "installing Debian's postgresql-15"
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15 >&2
    fi
    PG_VERSION="$("$PG_BIN/postgres" --version | awk '{ print $3 }')"
    [[ "$PG_VERSION" == 15.* ]] || die "PostgreSQL $PG_VERSION is not 15.x"
    id postgres >/dev/null 2>&1 || die "no postgres user (the Debian package creates it)"
    log "PostgreSQL $PG_VERSION"
}

start_postgres() {
    mkdir -p "$WORK/pg" "$WORK/pgsock"
    chown postgres:postgres "$WORK/pg" "$WORK/pgsock"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    # A DBA's settings for a dedicated box with SSDs; the cache is sled's default size (1 GiB);
    # wal_level minimal for the bulk load (the tables are created in the COPY's transaction).
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w -t 60 \
        -o "-c listen_addresses='' -c unix_socket_directories='$WORK/pgsock' -c port=$PG_PORT \
            -c shared_buffers=$PG_SHARED_BUFFERS -c effective_cache_size=16GB -c random_page_cost=1.1 \
            -c max_wal_size=4GB -c checkpoint_timeout=30min -c maintenance_work_mem=1GB \
            -c wal_level=minimal -c max_wal_senders=0" \
        start >&2 || { tail -n 20 "$WORK/pg/server.log" >&2; die "PostgreSQL did not start"; }
    PG_STARTED=1
    log "PostgreSQL up on $WORK/pgsock (port $PG_PORT, unix socket only)"
}

# --- the run ---------------------------------------------------------------------------------------

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ensure_postgres
log "building the release binary"
(cd "$ROOT" && cargo build --release -p ipam-bench >&2)
# A private copy: a rebuild of the shared target directory during the run cannot swap it, and
# stopping other ledger_bench processes by name does not stop this run.
BENCH="$WORK/ledger-vs-pg-tool"
cp "$TARGET_DIR/release/ledger_bench" "$BENCH"
log "data under $WORK ($(stat -f -c %T "$WORK")), results in $RESULTS"

# One phase: NAME COMMAND...; stdout (JSON) goes to $RESULTS/NAME.json, stderr to NAME.log.
phase() {
    local name="$1"
    shift
    log "$name: $*"
    echo "$*" >"$RESULTS/$name.cmd"
    "$@" >"$RESULTS/$name.json" 2>"$RESULTS/$name.log" || {
        tail -n 20 "$RESULTS/$name.log" >&2
        die "$name failed"
    }
    tail -n 1 "$RESULTS/$name.log" >&2
}

sled_bytes() { du -sb "$1/sled" | awk '{ print $1 }'; }

start_postgres

# 1. What indexing costs: the same prefix of the history, indexed as it is applied and not
#    indexed, one after the other; then the unindexed one indexed the way a replica rebuilds its
#    index (after a snapshot install), and the ledger's questions timed on both indexed copies.
if [[ "$SKIP_PREFIX" == 1 ]]; then
    log "skipping the prefix: its reports are taken from $RESULTS"
else
    for variant in index no-index; do
        flag=()
        [[ "$variant" == no-index ]] && flag=(--no-index)
        sync
        phase "generate-prefix-$variant" "$BENCH" generate --data "$WORK/prefix-$variant" \
            --events "$PREFIX_EVENTS" --nodes "$NODES" --seed "$SEED" "${flag[@]}"
        sled_bytes "$WORK/prefix-$variant" >"$RESULTS/bytes-prefix-$variant"
    done
    phase reindex-prefix "$BENCH" reindex --data "$WORK/prefix-no-index"
    sled_bytes "$WORK/prefix-no-index" >"$RESULTS/bytes-prefix-rebuilt"
    # The prefix in PostgreSQL too: the questions against the ledger indexed as applied.
    phase load-postgres-prefix "$BENCH" load-postgres --data "$WORK/prefix-index" --pg-host "$WORK/pgsock" \
        --pg-port "$PG_PORT" --pg-database prefix
    phase query-prefix "$BENCH" query --data "$WORK/prefix-index" --pg-host "$WORK/pgsock" --pg-port "$PG_PORT" \
        --pg-database prefix --questions "$QUESTIONS" --seed "$SEED" --markdown "$RESULTS/query-prefix.md"
    phase query-prefix-rebuilt "$BENCH" query --ours-only --data "$WORK/prefix-no-index" --pg-host none \
        --questions "$QUESTIONS" --seed "$SEED"
    "$PG_BIN/psql" -h "$WORK/pgsock" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE prefix" >&2
    rm -rf "$WORK/prefix-index" "$WORK/prefix-no-index"
fi

# 2. The ledger of the whole run, indexed as applied (or, with --full-ledger rebuilt, written
#    unindexed and then indexed as a replica rebuilds its index).
sync
if [[ "$FULL_LEDGER" == live ]]; then
    phase generate "$BENCH" generate --data "$WORK/ledger" --events "$EVENTS" --nodes "$NODES" --seed "$SEED"
else
    phase generate "$BENCH" generate --data "$WORK/ledger" --events "$EVENTS" --nodes "$NODES" --seed "$SEED" --no-index
    sled_bytes "$WORK/ledger" >"$RESULTS/bytes-ledger-no-index"
    phase reindex "$BENCH" reindex --data "$WORK/ledger"
fi
sled_bytes "$WORK/ledger" >"$RESULTS/bytes-ledger"

# 3. The same events in PostgreSQL.
phase load-postgres "$BENCH" load-postgres --data "$WORK/ledger" --pg-host "$WORK/pgsock" --pg-port "$PG_PORT"
du -sb "$WORK/pg" | awk '{ print $1 }' >"$RESULTS/bytes-pg-datadir"

# 4. The questions.
phase query "$BENCH" query --data "$WORK/ledger" --pg-host "$WORK/pgsock" --pg-port "$PG_PORT" \
    --questions "$QUESTIONS" --seed "$SEED" --markdown "$RESULTS/query.md" --explain "$RESULTS/explain.txt"

# --- the summary ------------------------------------------------------------------------------------

per_event() { awk -v b="$1" -v n="$2" 'BEGIN { printf "%.0f", b / n }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f %%", (a / b - 1) * 100 }'; }

{
    G="$RESULTS/generate.json"
    PI="$RESULTS/generate-prefix-index.json"
    PN="$RESULTS/generate-prefix-no-index.json"
    L="$RESULTS/load-postgres.json"
    events="$(jq -r .events "$G")"
    span_days="$(jq -r '(.last_at - .first_at) / 86400000 * 100 | round / 100' "$G")"
    echo "Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -r);"
    echo "PostgreSQL $PG_VERSION (shared_buffers $PG_SHARED_BUFFERS); data on $(stat -f -c %T "$WORK")."
    echo "Command: \`$COMMAND_LINE\` (JSON reports in $RESULTS)."
    echo
    echo "Ledger: $events events of $NODES nodes over $span_days days (seed $SEED);"
    echo "events by kind: $(jq -r '.kinds | to_entries | sort_by(-.value) | map("\(.key) \(.value)") | join(", ")' "$L")."
    echo
    echo "### Questions (${QUESTIONS} of each kind, µs)"
    echo
    cat "$RESULTS/query.md"
    echo
    echo "### Write path (first $(jq -r .events "$PI") events, 64 entries per apply)"
    echo
    echo "| ledger | events/s inside apply | events/s wall | apply s | bytes on disk (du -sb) | bytes/event |"
    echo "|---|---:|---:|---:|---:|---:|"
    for variant in index no-index; do
        f="$RESULTS/generate-prefix-$variant.json"
        b="$(cat "$RESULTS/bytes-prefix-$variant")"
        printf '| %s | %.0f | %.0f | %.1f | %s | %s |\n' "$variant" "$(jq -r .write.apply_events_per_sec "$f")" \
            "$(jq -r .write.events_per_sec "$f")" "$(jq -r .write.apply_secs "$f")" "$b" \
            "$(per_event "$b" "$(jq -r .events "$f")")"
    done
    b="$(cat "$RESULTS/bytes-prefix-rebuilt")"
    printf '| no-index, then reindex | %.0f (reindex alone) | | %.1f (reindex) | %s | %s |\n' \
        "$(jq -r .events_per_sec "$RESULTS/reindex-prefix.json")" "$(jq -r .secs "$RESULTS/reindex-prefix.json")" \
        "$b" "$(per_event "$b" "$(jq -r .events "$PI")")"
    echo
    echo "Indexing costs $(pct "$(jq -r .write.apply_secs "$PI")" "$(jq -r .write.apply_secs "$PN")") apply time" \
        "($(pct "$(jq -r .write.wall_secs "$PI")" "$(jq -r .write.wall_secs "$PN")") wall)."
    echo
    echo "Questions on the prefix, the ledger indexed as applied, against PostgreSQL holding the prefix (µs):"
    echo
    cat "$RESULTS/query-prefix.md"
    echo
    echo "The same questions on the prefix ledger indexed by a rebuild (µs, ours only):"
    echo
    echo "| question | as applied p50 | p99 | mean | rebuilt p50 | p99 | mean |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for k in who_had history_ip history_pod_uid history_pod_name; do
        a="$RESULTS/query-prefix.json"
        r="$RESULTS/query-prefix-rebuilt.json"
        q=".timings.kinds[] | select(.kind == \"$k\") | .ours"
        printf '| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n' "$k" \
            "$(jq -r "$q.p50_us" "$a")" "$(jq -r "$q.p99_us" "$a")" "$(jq -r "$q.mean_us" "$a")" \
            "$(jq -r "$q.p50_us" "$r")" "$(jq -r "$q.p99_us" "$r")" "$(jq -r "$q.mean_us" "$r")"
    done
    echo
    echo "### Bytes on disk, whole ledger ($events events)"
    echo
    b="$(cat "$RESULTS/bytes-ledger")"
    echo "| store | bytes | bytes/event |"
    echo "|---|---:|---:|"
    if [[ "$FULL_LEDGER" == rebuilt ]]; then
        v="$(cat "$RESULTS/bytes-ledger-no-index")"
        echo "| sled before indexing (du -sb) | $v | $(per_event "$v" "$events") |"
    fi
    echo "| sled, $FULL_LEDGER index (du -sb, events + indexes + state machine meta) | $b | $(per_event "$b" "$events") |"
    v="$(jq -r '[.sled_trees[] | .key_bytes + .value_bytes] | add' "$L")"
    echo "| sled, what its trees hold (keys + values, all trees) | $v | $(per_event "$v" "$events") |"
    for t in events ledger_index; do
        v="$(jq -r ".sled_trees.$t | .key_bytes + .value_bytes" "$L")"
        echo "| … tree $t ($(jq -r ".sled_trees.$t.entries" "$L") entries) | $v | $(per_event "$v" "$events") |"
    done
    for t in events event_ips; do
        v="$(jq -r ".sizes.tables.$t + .sizes.toast_and_maps.$t" "$L")"
        echo "| PostgreSQL table $t (heap + TOAST + maps) | $v | $(per_event "$v" "$events") |"
    done
    v="$(jq -r '[.sizes.indexes[]] | add' "$L")"
    echo "| PostgreSQL indexes (all) | $v | $(per_event "$v" "$events") |"
    v="$(jq -r .sizes.total "$L")"
    echo "| PostgreSQL total (pg_total_relation_size of both tables) | $v | $(per_event "$v" "$events") |"
    v="$(cat "$RESULTS/bytes-pg-datadir")"
    echo "| PostgreSQL data directory (du -sb, with WAL and catalogs) | $v | $(per_event "$v" "$events") |"
    echo
    echo "Index sizes: $(jq -r '.sizes.indexes | to_entries | map("\(.key) \(.value)") | join(", ")' "$L")."
    echo "Generate (full, index: $(jq -r .write.index "$G")): $(jq -r '.write.apply_events_per_sec | round' "$G") events/s inside apply," \
        "$(jq -r '.write.wall_secs | round' "$G") s wall."
    if [[ "$FULL_LEDGER" == rebuilt ]]; then
        echo "Reindex (full): $(jq -r '.secs | round' "$RESULTS/reindex.json") s, $(jq -r '.events_per_sec | round' "$RESULTS/reindex.json") events/s."
    fi
    echo "PostgreSQL load: COPY $(jq -r '.copy_secs | round' "$L") s, indexes $(jq -r '[.index_secs[]] | add | round' "$L") s," \
        "VACUUM ANALYZE $(jq -r '.vacuum_secs | round' "$L") s."
} | tee "$RESULTS/summary.md"
