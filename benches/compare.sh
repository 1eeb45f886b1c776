#!/usr/bin/env bash
# pqa-engine side by side with a peer (Quix Streams) on the same preloaded
# topic of a real Kafka-compatible broker (tansu, see benches/broker.sh).
#
#   bash benches/compare.sh            # 1,000,000 events, 1 run
#   EVENTS=2000000 RUNS=3 bash benches/compare.sh
#
# What it does: starts tansu on loopback, generates a history with
# `pqa-engine simulate` straight into a topic (key = account id), then for
# each run: `pqa-engine run` (release build, shipped default definition, fresh
# state dir, fresh consumer group) until it has processed every event, and the
# Quix Streams app benches/peers/quix_count.py (a per-account 28-day sliding
# window count only, its own group) until it has consumed QUIX_EVENTS events.
# It prints both rates and their ratio per run and the medians, and keeps a
# TSV of the runs under $PQA_BENCH_HOME/results/.
#
# Rates are "steady": events / time from the first processed event to the
# last (the group join and start-up are excluded for both; the time from
# process start is printed too).
#
# Environment (defaults in brackets):
#   EVENTS [1000000]        events in the topic (pqa-engine processes all of them)
#   QUIX_EVENTS [100000]    events the Quix app consumes, from the start of the topic (at most
#                           EVENTS; Quix's sliding count runs at ~0.4-2 k/s here, so all of 1 M takes long)
#   ACCOUNTS [3000] DAYS [90] SEED [42]   the simulated history
#   INPUT                   an NDJSON file to load instead of simulating (e.g. the long tail of
#                           benches/longtail.py), keyed by account (benches/peers/load_topic.py)
#   QUIX_EMIT [current]     current (the count after every event) | final (when a window closes)
#   PARTITIONS [2]          partitions of the input topic
#   RUNS [1]                runs of each side (over the same topic)
#   QUIX_WINDOW [sliding]   sliding | hopping | tumbling | none (see quix_count.py)
#   SKIP_QUIX, SKIP_PQA     set to 1 to run one side only
#   PQA_SHADOWS             space-separated shadow definition files for pqa-engine (judged beside
#                           the live one, announcing to the shadow topic): the cost of shadows
#   TANSU_PORT [19092]      broker port (a broker already running there is reused and left running)
#   PQA_BENCH_HOME [~/.cache/pqa-bench]   tansu install, Python venv, results
#   PQA_BIN                 a pqa-engine binary (default: cargo build --release, then
#                           $CARGO_TARGET_DIR/release/pqa-engine)
#   PYTHON [python3]        interpreter used to create the venv for Quix Streams
set -euo pipefail

cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-1000000}"
QUIX_EVENTS="${QUIX_EVENTS:-100000}"
ACCOUNTS="${ACCOUNTS:-3000}"
DAYS="${DAYS:-90}"
SEED="${SEED:-42}"
PARTITIONS="${PARTITIONS:-2}"
RUNS="${RUNS:-1}"
QUIX_WINDOW="${QUIX_WINDOW:-sliding}"
QUIX_EMIT="${QUIX_EMIT:-current}"
export TANSU_PORT="${TANSU_PORT:-19092}"
export PQA_BENCH_HOME="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
BROKER="127.0.0.1:$TANSU_PORT"
STAMP="$(date +%Y%m%d-%H%M%S)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pqa-compare.XXXXXX")"
RESULTS="$PQA_BENCH_HOME/results"
mkdir -p "$RESULTS"
TSV="$RESULTS/compare-$STAMP.tsv"

log() { echo "compare: $*" >&2; }
now() { date +%s.%N; }

# --- tools a fresh Debian machine may lack ------------------------------------
need=()
command -v curl >/dev/null || need+=(curl)
command -v "${PYTHON:-python3}" >/dev/null || need+=(python3)
"${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]} (apt-get)"
    SUDO=""
    [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# --- pqa-engine (release) -------------------------------------------------
if [[ -z "${PQA_BIN:-}" ]]; then
    log "cargo build --release (the first build compiles RocksDB and librdkafka: 15-25 min)"
    cargo build --release --quiet
    PQA_BIN="${CARGO_TARGET_DIR:-target}/release/pqa-engine"
fi
[[ -x "$PQA_BIN" ]] || { log "no pqa-engine binary at $PQA_BIN"; exit 1; }

# --- Quix Streams in its own venv ----------------------------------------
VENV="$PQA_BENCH_HOME/venv"
QUIX_PY="$VENV/bin/python"
if [[ "${SKIP_QUIX:-0}" != 1 || -n "${INPUT:-}" ]]; then
    want="$(grep -i '^quixstreams==' benches/peers/requirements.txt | cut -d= -f3)"
    have="$("$QUIX_PY" -c 'import quixstreams; print(quixstreams.__version__)' 2>/dev/null || true)"
    if [[ "$have" != "$want" ]]; then
        log "installing quixstreams $want into $VENV"
        [[ -x "$QUIX_PY" ]] || "${PYTHON:-python3}" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/peers/requirements.txt
    fi
fi

# --- broker ----------------------------------------------------------------
STARTED_BROKER=0
if ! bash benches/broker.sh status >/dev/null 2>&1; then
    bash benches/broker.sh start
    STARTED_BROKER=1
fi
ENGINE_PID=""
cleanup() {
    [[ -n "$ENGINE_PID" ]] && kill -TERM "$ENGINE_PID" 2>/dev/null || true
    [[ "$STARTED_BROKER" == 1 && "${KEEP_BROKER:-0}" != 1 ]] && bash benches/broker.sh stop || true
    rm -rf "$WORK"
}
trap cleanup EXIT

TOPIC="bench.events.$STAMP"
bash benches/broker.sh create-topic "$TOPIC" "$PARTITIONS"
bash benches/broker.sh create-topic "bench.out.$STAMP" 1
bash benches/broker.sh create-topic "bench.dlq.$STAMP" 1
SHADOW_TOML=""
if [[ -n "${PQA_SHADOWS:-}" ]]; then
    bash benches/broker.sh create-topic "bench.out.$STAMP.shadow" 1
    for f in $PQA_SHADOWS; do
        SHADOW_TOML+=$'\n[[shadow]]\nfile = "'"$(realpath "$f")"$'"\n'
    done
    log "shadows: $PQA_SHADOWS"
fi

# --- preload ------------------------------------------------------------------
if [[ -n "${INPUT:-}" ]]; then
    log "load: $INPUT (at most $EVENTS events) -> $TOPIC"
    "$QUIX_PY" benches/peers/load_topic.py --broker "$BROKER" --topic "$TOPIC" --input "$INPUT" \
        --max-events "$EVENTS" 2> >(tee "$WORK/simulate.log" >&2)
    ACCOUNTS="$(sed -n 's/^produced [0-9]* events over \([0-9]*\) keys.*/\1/p' "$WORK/simulate.log") (from $INPUT)"
else
    log "simulate: $ACCOUNTS accounts, $DAYS days, seed $SEED, at most $EVENTS events -> $TOPIC"
    "$PQA_BIN" simulate --accounts "$ACCOUNTS" --days "$DAYS" --seed "$SEED" --max-events "$EVENTS" \
        --bootstrap-servers "$BROKER" --topic "$TOPIC" --progress 2> >(tee "$WORK/simulate.log" >&2)
fi
N="$(sed -n 's/^produced \([0-9]*\) events.*/\1/p' "$WORK/simulate.log")"
[[ -n "$N" && "$N" -gt 0 ]] || { log "nothing was produced into $TOPIC"; exit 1; }
if ((QUIX_EVENTS > N)); then QUIX_EVENTS="$N"; fi
log "topic $TOPIC holds $N events"

# --- one pqa-engine run ------------------------------------------------------
metric_sum() { # NAME: the sum of every sample of a metric (all labels)
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }' "$2"
}
free_port() { "${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_pqa() { # RUN -> sets P=(steady_rate from_start_rate seconds cpu_seconds)
    local r="$1" port state cfg
    port="$(free_port)"
    state="$WORK/pqa-state-$r"
    cfg="$WORK/pqa-$r.toml"
    cat >"$cfg" <<TOML
[kafka]
bootstrap_servers = "$BROKER"
group_id = "pqa-bench-$STAMP-$r"
input_topics = ["$TOPIC"]
output_topic = "bench.out.$STAMP"
dlq_topic = "bench.dlq.$STAMP"

[state]
dir = "$state"

[http]
addr = "127.0.0.1:$port"
$SHADOW_TOML
TOML
    local t0 t_first="" n_first=0 t_last n=0 m="$WORK/metrics-$r.txt"
    t0="$(now)"
    RUST_LOG=warn "$PQA_BIN" run --config "$cfg" 2>"$WORK/pqa-$r.log" &
    ENGINE_PID=$!
    while :; do
        if ! kill -0 "$ENGINE_PID" 2>/dev/null; then
            log "pqa-engine exited early:"; cat "$WORK/pqa-$r.log" >&2; exit 1
        fi
        if curl -sf "http://127.0.0.1:$port/metrics" -o "$m.tmp"; then
            mv "$m.tmp" "$m"
            n="$(metric_sum pqa_batch_messages_sum "$m")"
            if [[ -z "$t_first" && "$n" -gt 0 ]]; then t_first="$(now)"; n_first="$n"; fi
            if [[ "$n" -ge "$N" ]]; then t_last="$(now)"; break; fi
        fi
        sleep 0.05
    done
    local cpu clk
    clk="$(getconf CLK_TCK)"
    cpu="$(awk -v c="$clk" '{ printf "%.2f", ($14 + $15) / c }' "/proc/$ENGINE_PID/stat")"
    kill -TERM "$ENGINE_PID"
    wait "$ENGINE_PID" || log "pqa-engine exit status $?"
    ENGINE_PID=""
    cp "$m" "$RESULTS/compare-$STAMP-pqa-metrics-$r.txt"
    # Where the time went, from the engine's own histograms (seconds summed over batches).
    local stages
    stages="$(awk '/^pqa_batch_duration_seconds_sum/ { match($1, /stage="[^"]*"/); printf "%s=%.2fs ", substr($1, RSTART + 7, RLENGTH - 8), $2 }' "$m")"
    log "pqa-engine run $r: batch time by stage: $stages; cpu ${cpu}s; events $(metric_sum pqa_events_total "$m"), dead letters $(metric_sum pqa_dead_letters_total "$m"), announcements $(metric_sum pqa_announcements_total "$m")"
    read -ra P <<<"$(awk -v n="$N" -v nf="$n_first" -v t0="$t0" -v tf="$t_first" -v tl="$t_last" -v cpu="$cpu" \
        'BEGIN { printf "%.0f %.0f %.2f %s\n", (n - nf) / (tl - tf), n / (tl - t0), tl - t0, cpu }')"
}

run_quix() { # RUN -> sets Q=(steady_rate from_start_rate seconds)
    local r="$1" out
    out="$("$QUIX_PY" -W ignore benches/peers/quix_count.py --broker "$BROKER" --topic "$TOPIC" \
        --group "quix-bench-$STAMP-$r" --messages "$QUIX_EVENTS" --window "$QUIX_WINDOW" --emit "$QUIX_EMIT" \
        --state-dir "$WORK/quix-state-$r" 2>"$WORK/quix-$r.log")" || {
        log "quix_count failed:"; tail -n 30 "$WORK/quix-$r.log" >&2; exit 1
    }
    read -ra Q <<<"$("$QUIX_PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["events_per_second"], d["events_per_second_from_start"], d["seconds_from_start"])' "$out")"
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.0f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

printf 'run\tpqa_events_per_s\tpqa_from_start_per_s\tpqa_seconds\tpqa_cpu_s\tquix_events_per_s\tquix_from_start_per_s\tquix_seconds\tratio\n' >"$TSV"
for r in $(seq 1 "$RUNS"); do
    P=(- - - -)
    Q=(- - -)
    ratio=-
    if [[ "${SKIP_PQA:-0}" != 1 ]]; then
        log "run $r: pqa-engine run over $N events"
        run_pqa "$r"
    fi
    if [[ "${SKIP_QUIX:-0}" != 1 ]]; then
        log "run $r: quix_count ($QUIX_WINDOW window, $QUIX_EMIT) over $QUIX_EVENTS events"
        run_quix "$r"
    fi
    if [[ "${P[0]}" != - && "${Q[0]}" != - ]]; then ratio="$(awk -v a="${P[0]}" -v b="${Q[0]}" 'BEGIN { printf "%.1f", a / b }')"; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "${P[@]}" "${Q[@]}" "$ratio" >>"$TSV"
    echo "run $r: pqa-engine ${P[0]} events/s (${P[2]} s from start, ${P[3]} s cpu) | quix ${Q[0]} events/s (${Q[2]} s) | ratio ${ratio}x"
done

pm="$(tail -n +2 "$TSV" | cut -f2 | grep -v '^-$' | median)"
qm="$(tail -n +2 "$TSV" | cut -f6 | grep -v '^-$' | median)"
rm_="$(tail -n +2 "$TSV" | cut -f9 | grep -v '^-$' | median)"
echo
echo "machine: nproc $(nproc), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); $N events, $ACCOUNTS accounts, $DAYS days, $PARTITIONS partitions, tansu on $BROKER"
echo "median over $RUNS run(s): pqa-engine $pm events/s, quix ($QUIX_WINDOW .$QUIX_EMIT(), $QUIX_EVENTS events) $qm events/s, ratio ${rm_}x"
echo "runs: $TSV"
