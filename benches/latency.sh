#!/usr/bin/env bash
# End-to-end latency (event produced -> PQA read from the output topic) at a
# paced input rate, through a real broker: runs benches/latency.rs RUNS times
# and prints the median p50 / p99. See the top of benches/latency.rs for what
# is measured and every LAT_* setting.
#
#   bash benches/latency.sh                                   # 50 k events/s, 1 run, shipped defaults
#   RUNS=3 LABEL=wait5 PQA_KAFKA__MAX_BATCH_WAIT_MS=5 bash benches/latency.sh
#   RUNS=3 LABEL=mock20k LAT_BROKER=mock LAT_RATE=20000 bash benches/latency.sh   # no outside broker
#   python3 benches/plot.py latency <stem>.csv                # the plot (see benches/plot.py)
#
# Environment (defaults in brackets): RUNS [1]; LABEL [defaults] (names the
# outputs $PQA_BENCH_HOME/results/latency-LABEL-<time>-RUN.{txt,csv}, -lag.csv);
# TANSU_PORT [19092] (a broker already running there is reused and left
# running, else one is started and stopped); LAT_BROKER=mock: no tansu, the
# benchmark starts librdkafka's mock cluster itself; PQA_BIN (default: cargo build
# --release); every LAT_* and PQA_* variable reaches benches/latency.rs.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS="${RUNS:-1}"
LABEL="${LABEL:-defaults}"
export TANSU_PORT="${TANSU_PORT:-19092}"
export PQA_BENCH_HOME="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
export LAT_BOOTSTRAP="${LAT_BOOTSTRAP:-127.0.0.1:$TANSU_PORT}"
RESULTS="$PQA_BENCH_HOME/results"
STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"

log() { echo "latency.sh: $*" >&2; }

if [[ -z "${PQA_BIN:-}" ]]; then
    log "cargo build --release"
    cargo build --release --quiet
    export PQA_BIN="${CARGO_TARGET_DIR:-target}/release/pqa-engine"
fi
cargo bench --bench latency --no-run --quiet

STARTED_BROKER=0
if [[ "${LAT_BROKER:-}" == mock ]]; then
    log "broker: librdkafka's mock cluster, started by the benchmark itself"
elif ! bash benches/broker.sh status >/dev/null 2>&1; then
    bash benches/broker.sh start
    STARTED_BROKER=1
fi
cleanup() { [[ "$STARTED_BROKER" == 1 ]] && bash benches/broker.sh stop || true; }
trap cleanup EXIT

stems=()
for r in $(seq 1 "$RUNS"); do
    stem="$RESULTS/latency-$LABEL-$STAMP-$r"
    log "run $r of $RUNS -> $stem.*"
    LAT_OUT="$stem" LAT_LABEL="$LABEL" cargo bench --bench latency --quiet
    stems+=("$stem")
    echo
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
field() { # NAME: the figure after "NAME " on the latency line of each summary
    for s in "${stems[@]}"; do
        grep '^latency (produce' "$s.txt" | sed -n "s/.* $1 \([0-9.]*\) ms.*/\1/p"
    done | median
}
echo "median over $RUNS run(s) ($LABEL): p50 $(field p50) ms, p90 $(field p90) ms, p99 $(field p99) ms, p99.9 $(field p99.9) ms, max $(field max) ms"
echo "summaries: ${stems[*]/%/.txt}"
