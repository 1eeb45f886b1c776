#!/usr/bin/env bash
# The cross-process kill -9 loop (issue 9) on a real broker: see the top of
# benches/kill9_loop.py for what one run does and what it checks.
#
#   bash benches/kill9_loop.sh --runs 10                          # tansu, sqlite storage
#   TANSU_STORAGE=memory bash benches/kill9_loop.sh --runs 10     # tansu 0.6.0 memory storage (skips mid-batch)
#   bash benches/kill9_loop.sh --runs 1 --events 200000 --accounts 20000 --pause 15   # a quick try
#
# Keep --pause at 15 s or more on tansu 0.6.0: a member that rejoins before
# tansu has expired the killed one (the shipped session.timeout.ms is 10 s)
# can get an empty assignment that tansu never revises (BENCHMARKS.md,
# "Effectively once across processes"). On its SQLite storage a release
# build writes the changelog faster than tansu stores it: heartbeats then
# time out and the last instance can stall (2026-12-05); use TANSU_STORAGE=memory.
#
# Flags go to kill9_loop.py (--runs, --events, --accounts, --partitions,
# --kills, --pause, --changelog true|false, --sample, --seed).
# Environment: TANSU_STORAGE [sqlite], TANSU_PORT [19392], PQA_BENCH_HOME
# [~/.cache/pqa-bench], PQA_BIN [$CARGO_TARGET_DIR/release/pqa-engine, built
# if missing], OUT [benches/results/kill9-<storage>-<stamp>], WORK [a temp
# dir: history, clean replay, state dirs, engine logs], KEEP_BROKER [0],
# KEEP_STATE [0: a passing run's state dir is removed].
set -euo pipefail
cd "$(dirname "$0")/.."
export TANSU_PORT="${TANSU_PORT:-19392}"
export TANSU_STORAGE="${TANSU_STORAGE:-sqlite}"
export PQA_BENCH_HOME="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-benches/results/kill9-$TANSU_STORAGE-$STAMP}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/pqa-kill9.XXXXXX")}"
log() { echo "kill9_loop: $*" >&2; }

if [[ -z "${PQA_BIN:-}" ]]; then
    PQA_BIN="${CARGO_TARGET_DIR:-target}/release/pqa-engine"
    [[ -x "$PQA_BIN" ]] || { log "cargo build --release (15-25 min cold)"; cargo build --release --quiet; }
fi
[[ -x "$PQA_BIN" ]] || { log "no pqa-engine binary at $PQA_BIN"; exit 1; }
PQA_BIN="$(readlink -f "$PQA_BIN")"

VENV="$PQA_BENCH_HOME/venv-kill9"
if ! "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    log "installing $(cat benches/requirements-kill9.txt) into $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/requirements-kill9.txt
fi

cleanup() { [[ "${KEEP_BROKER:-0}" == 1 ]] || bash benches/broker.sh stop || true; }
trap cleanup EXIT
log "work dir $WORK, results in $OUT, broker tansu ($TANSU_STORAGE) on 127.0.0.1:$TANSU_PORT"
"$VENV/bin/python" benches/kill9_loop.py --bin "$PQA_BIN" --bootstrap "127.0.0.1:$TANSU_PORT" \
    --work "$WORK" --out "$OUT" "$@"
