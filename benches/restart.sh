#!/usr/bin/env bash
# Restart with a large local state (issue 4: "restart with 1 M accounts of
# state: ready to consume in < 5 s, no history replayed"), through a real
# Kafka-compatible broker (tansu, benches/broker.sh).
#
#   cargo build --release && TANSU_PORT=19292 bash benches/restart.sh
#   ACCOUNTS=20000 RESTARTS=1 TANSU_PORT=19292 bash benches/restart.sh   # a quick try
#
# What it does:
#  1. starts tansu on 127.0.0.1:$TANSU_PORT (unless one runs there), creates
#     an input topic ($PARTITIONS partitions), an output and a dead-letter
#     topic;
#  2. `pqa-engine simulate --accounts $ACCOUNTS --days 1 --topic ...`: every
#     account signs up on day 0 (a one-day history is a few events per
#     account, ~5.9), produced straight into the input topic;
#  3. fill: `pqa-engine run` (shipped defaults, changelog on unless
#     CHANGELOG=false) with a fresh state dir, until it has applied every
#     message (pqa_batch_messages_sum on /metrics), then SIGTERM. Reports the
#     time, the state dir size and the accounts (distinct account ids of the
#     history, counted by replaying the same simulate to stdout through awk,
#     plus a spot check of SPOT ids through /accounts/{id});
#  4. RESTARTS restarts after SIGTERM, then RESTARTS after kill -9. Before
#     each, NEW new events are produced into the input topic (simulate with
#     another seed: other messageIds, the same account ids, so they update
#     accounts that exist in state). Each restart is timed by
#     benches/restart_probe.py from just before the process is spawned: to
#     the first HTTP answer, to /readyz = 200, to the first event applied,
#     to all NEW applied. Then the run is stopped for the next one: the
#     SIGTERM restarts each follow a SIGTERM, the kill -9 restarts each
#     follow a kill -9 (the last SIGTERM run is killed with -9; each kill -9
#     run ends with kill -9, the last with SIGTERM).
#     "No history replayed": after a restart the engine must apply exactly
#     the NEW messages (pqa_batch_messages_sum == NEW, pqa_events_total ==
#     NEW) and skip none as already applied; the changelog records it read
#     back at assignment are reported (pqa_changelog_restored_records_total).
#  5. prints a markdown table and the medians; keeps the probe JSON and the
#     engine logs under $OUT (default benches/results/restart-<stamp>/).
#
# Environment (defaults in brackets):
#   ACCOUNTS [1000000]  SEED [42]  PARTITIONS [2]  RESTARTS [3]  NEW [2000]
#   NEW_BEFORE_KILL [$NEW]  new events for the runs that end with kill -9, so that the
#                       restart after it recovers the write-ahead log of that much work
#                       (RocksDB keeps the WAL until every column family has flushed)
#   CHANGELOG [true]    kafka.changelog (the changelog topic is named in the config, so it
#                       stays the same whatever the group id)
#   KILL9_GROUP [fresh] fresh: each restart after kill -9 joins with a new consumer group id
#                       (the engine seeks to the offsets in RocksDB whatever the group);
#                       same: the same group id as before the kill (tansu 0.6.0 then keeps the
#                       dead member's partitions: the new member got an empty assignment for
#                       over 9 minutes, see benches/results/memory-restart.md)
#   FILL_BLOCK_CACHE_BYTES  state.block_cache_bytes for the fill run only (default: the
#                       engine's default). The restarts always run with the defaults.
#   SPOT [200]          account ids checked through /accounts/{id} after the fill
#   TANSU_PORT [19292]  PQA_BENCH_HOME [~/.cache/pqa-bench]
#   KEEP_BROKER [0]     leave a broker this script started running
#   KEEP_STATE [0]      keep the state dir (under $WORK)
#   PQA_BIN             the binary (default $CARGO_TARGET_DIR/release/pqa-engine)
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS="${ACCOUNTS:-1000000}"
SEED="${SEED:-42}"
PARTITIONS="${PARTITIONS:-2}"
RESTARTS="${RESTARTS:-3}"
NEW="${NEW:-2000}"
NEW_BEFORE_KILL="${NEW_BEFORE_KILL:-$NEW}"
CHANGELOG="${CHANGELOG:-true}"
SPOT="${SPOT:-200}"
export TANSU_PORT="${TANSU_PORT:-19292}"
export PQA_BENCH_HOME="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
BROKER="127.0.0.1:$TANSU_PORT"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-benches/results/restart-$STAMP}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/pqa-restart.XXXXXX")}"
bin="${PQA_BIN:-${CARGO_TARGET_DIR:-target}/release/pqa-engine}"
[[ -x "$bin" ]] || { echo "no pqa-engine binary at $bin (cargo build --release)" >&2; exit 1; }
bin="$(readlink -f "$bin")"
mkdir -p "$OUT" "$WORK"
log() { echo "restart: $*" >&2; }

STARTED_BROKER=0
if ! bash benches/broker.sh status >/dev/null 2>&1; then
    bash benches/broker.sh start
    STARTED_BROKER=1
fi
cleanup() {
    [[ "$STARTED_BROKER" == 1 && "${KEEP_BROKER:-0}" != 1 ]] && bash benches/broker.sh stop || true
    [[ "${KEEP_STATE:-0}" == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

TOPIC="restart.events.$STAMP"
GROUP="pqa-restart-$STAMP"
bash benches/broker.sh create-topic "$TOPIC" "$PARTITIONS"
bash benches/broker.sh create-topic "restart.out.$STAMP" 1
bash benches/broker.sh create-topic "restart.dlq.$STAMP" 1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
STATE="$WORK/state"
CFG="$WORK/pqa.toml"
cat >"$CFG" <<TOML
[kafka]
bootstrap_servers = "$BROKER"
group_id = "$GROUP"
input_topics = ["$TOPIC"]
output_topic = "restart.out.$STAMP"
dlq_topic = "restart.dlq.$STAMP"
changelog = $CHANGELOG
changelog_topic = "$GROUP-changelog"

[state]
dir = "$STATE"

[http]
addr = "127.0.0.1:$PORT"
TOML
cp "$CFG" "$OUT/pqa.toml"

produce() { # SEED ACCOUNTS [MAX_EVENTS] -> prints the number of events produced
    local max=()
    [[ -n "${3:-}" ]] && max=(--max-events "$3")
    "$bin" simulate --accounts "$2" --days 1 --seed "$1" "${max[@]}" \
        --bootstrap-servers "$BROKER" --topic "$TOPIC" --progress 2>"$WORK/simulate-$1.log"
    sed -n 's/^produced \([0-9]*\) events.*/\1/p' "$WORK/simulate-$1.log"
}

probe() { # NAME UNTIL STOP [EXTRA RUN ARGS...] -> JSON on stdout
    local name="$1" until="$2" stop="$3"
    shift 3
    NO_COLOR=1 RUST_LOG=info python3 benches/restart_probe.py --http "127.0.0.1:$PORT" --until "$until" --stop "$stop" \
        --log "$OUT/engine-$name.log" --metrics-out "$OUT/metrics-$name.txt" -- "$bin" run --config "$CFG" "$@" |
        tee "$OUT/probe-$name.json"
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=eval(sys.argv[2], {}, {"d": d}); print("-" if v is None else v)' "$1" "$2"; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load.txt"
log "simulate: $ACCOUNTS accounts, 1 day, seed $SEED -> $TOPIC ($PARTITIONS partitions)"
N="$(produce "$SEED" "$ACCOUNTS")"
[[ -n "$N" && "$N" -gt 0 ]] || { log "simulate produced nothing"; cat "$WORK/simulate-$SEED.log" >&2; exit 1; }
log "$(tail -n 1 "$WORK/simulate-$SEED.log")"
cp "$WORK/simulate-$SEED.log" "$OUT/"

log "distinct accounts in the history (same simulate to stdout, awk)"
DISTINCT="$("$bin" simulate --accounts "$ACCOUNTS" --days 1 --seed "$SEED" -o - 2>/dev/null | LC_ALL=C awk '
    { i = index($0, "\"groupId\":\""); if (i > 0) { r = substr($0, i + 11); id = substr(r, 1, index(r, "\"") - 1); if (!(id in s)) { s[id] = 1; n++ } } }
    END { print n }')"
log "$DISTINCT distinct accounts in $N events"

log "fill: pqa-engine run until all $N messages are applied, then SIGTERM"
if [[ -n "${FILL_BLOCK_CACHE_BYTES:-}" ]]; then
    PQA_STATE__BLOCK_CACHE_BYTES="$FILL_BLOCK_CACHE_BYTES" probe fill "$N" term >/dev/null
else
    probe fill "$N" term >/dev/null
fi
fill_s="$(jget "$OUT/probe-fill.json" 'd["marks_s"]["done"]')"
state_mib="$(du -sm "$STATE" | cut -f1)"
sst_files="$(find "$STATE" -name '*.sst' | wc -l)"
log "fill: $fill_s s ($(awk -v n="$N" -v s="$fill_s" 'BEGIN { printf "%.0f", n / s }') events/s from start); state dir $state_mib MiB, $sst_files SST files; events applied $(jget "$OUT/probe-fill.json" 'd["counters"]["events_applied"]'), dead letters $(jget "$OUT/probe-fill.json" 'd["counters"]["dead_letters"]'), changelog records written $(jget "$OUT/probe-fill.json" 'd["counters"]["changelog_records_written"]')"
echo "load average after fill: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt"

results="$OUT/restarts.tsv"
printf 'run\tafter\twal_mib_at_start\tnew_events\thttp_s\tready_s\tfirst_event_s\tall_new_s\tbatch_messages\tevents_applied\tduplicates_skipped\tchangelog_restored\tstore_opened_s\tassigned_s\tload1\n' >"$results"
restart() { # NAME AFTER STOP_AT_END SEED
    local name="$1" after="$2" stop="$3" seed="$4" n want wal
    want="$NEW"
    [[ "$stop" == kill ]] && want="$NEW_BEFORE_KILL"
    n="$(produce "$seed" $((want / 5 + 500)) "$want")"
    wal="$(find "$STATE" -maxdepth 1 -name '*.log' -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s / 1048576 }')"
    log "$name (after $after): $n new events produced; starting"
    local load1
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    local extra=()
    if [[ "$after" == "kill -9" && "${KILL9_GROUP:-fresh}" == fresh ]]; then extra=(--group-id "$GROUP-$name"); fi
    probe "$name" "$n" "$stop" "${extra[@]}" >/dev/null
    local f="$OUT/probe-$name.json"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$after" "$wal" "$n" \
        "$(jget "$f" 'd["marks_s"].get("http")')" "$(jget "$f" 'd["marks_s"].get("ready")')" \
        "$(jget "$f" 'd["marks_s"].get("first")')" "$(jget "$f" 'd["marks_s"].get("done")')" \
        "$(jget "$f" 'int(d["counters"]["batch_messages"])')" "$(jget "$f" 'int(d["counters"]["events_applied"])')" \
        "$(jget "$f" 'int(d["counters"]["duplicates_skipped"])')" "$(jget "$f" 'int(d["counters"]["changelog_restored_records"])')" \
        "$(jget "$f" 'd["log_marks_s"].get("state changelog on", d["log_marks_s"].get("consuming"))')" \
        "$(jget "$f" 'd["log_marks_s"].get("partitions assigned")')" "$load1" | tee -a "$results" >&2
}

# Spot check: SPOT account ids (evenly spread over the id range) must be
# known to the state after the fill; done through a short run's /accounts.
check_accounts() {
    NO_COLOR=1 RUST_LOG=warn "$bin" run --config "$CFG" 2>"$OUT/engine-spot.log" &
    local pid=$! found=0 missing=0 i id
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.05; done
    for i in $(seq 0 $((SPOT - 1))); do
        id="$(printf 'acct-%05d' $((i * ACCOUNTS / SPOT + (ACCOUNTS / SPOT) / 2)))"
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/accounts/$id")" == 200 ]]; then
            found=$((found + 1))
        else
            missing=$((missing + 1))
        fi
    done
    kill -TERM "$pid"; wait "$pid" || true
    echo "$found $missing"
}

seed=$((SEED + 1000))
for r in $(seq 1 "$RESTARTS"); do
    seed=$((seed + 1))
    stop=term
    ((r == RESTARTS)) && stop=kill
    restart "sigterm-$r" "SIGTERM" "$stop" "$seed"
done
for r in $(seq 1 "$RESTARTS"); do
    seed=$((seed + 1))
    stop=kill
    ((r == RESTARTS)) && stop=term
    restart "kill9-$r" "kill -9" "$stop" "$seed"
done
read -r spot_found spot_missing <<<"$(check_accounts)"
echo "load average after restarts: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt"

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col_median() { awk -F'\t' -v a="$1" -v c="$2" 'NR > 1 && $2 == a { print $c }' "$results" | median; }
{
    echo "machine: nproc $(nproc), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); tansu on $BROKER; $(cat "$OUT/load.txt" | tr '\n' ';')"
    echo "history: $N events, $DISTINCT distinct accounts, $PARTITIONS partitions, changelog $CHANGELOG, group after kill -9: ${KILL9_GROUP:-fresh}, fill block cache ${FILL_BLOCK_CACHE_BYTES:-default}"
    echo "fill: $fill_s s from process start; state dir $state_mib MiB ($sst_files SST files); spot check: $spot_found of $SPOT account ids known ($spot_missing missing)"
    echo
    echo "| run | after | WAL MiB at start | new events | HTTP up s | ready s | first new event s | all new applied s | messages applied | events applied | duplicates skipped | changelog records read | store open + changelog check done s | partitions assigned s | load (1 min) |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    tail -n +2 "$results" | awk -F'\t' '{ printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }'
    echo
    for a in SIGTERM "kill -9"; do
        echo "median after $a: ready $(col_median "$a" 6) s, first new event $(col_median "$a" 7) s, all new applied $(col_median "$a" 8) s"
    done
} | tee "$OUT/summary.md"
log "results in $OUT"
