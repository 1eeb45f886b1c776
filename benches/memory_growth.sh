#!/usr/bin/env bash
# Memory and throughput while the number of accounts grows (issue 4:
# "RSS flat, bounded by the cache setting, <= 1 GiB" for 100 k -> 1 M -> 3 M
# accounts). A companion of benches/memory.sh, which samples RSS over time.
#
#   cargo build --release && bash benches/memory_growth.sh
#   ACCOUNTS=3000000 CHECKPOINTS="100000 1000000 3000000" bash benches/memory_growth.sh
#
# What it does:
#  1. `pqa-engine simulate --accounts $ACCOUNTS --days 1` into a plain NDJSON
#     file. With one simulated day every account signs up on day 0 (sim.rs:
#     sign-up day is random in the first third of the period, at least 1
#     day), so the history is a few events per account (~5.9: `identify` and
#     `group` of the first users, a session or two), sorted by time, with the
#     accounts interleaved over the day: an account's events are spread over
#     hours, so once accounts outnumber the cache most events miss it.
#  2. One pass over the file (awk) gives the exact accounts-seen curve: for
#     every STEP-th new account id (the first `"groupId":"..."` of a line;
#     every simulated event carries one), the line and the byte offset where
#     it first appears.
#  3. `pqa-engine replay` over the file (default settings unless PQA_...
#     variables are set: state.cache_accounts = 100000, 128 MiB block cache),
#     with a fresh --state-dir. Every SAMPLE seconds the script reads the
#     replay's read position in the file (/proc/PID/fdinfo: `pos`), its RSS
#     (VmRSS) and peak RSS (VmHWM), and converts the position into accounts
#     seen with the curve of step 2. The reader is ahead of the engine by
#     its 1 MiB buffer and up to 6 decoded chunks of 1,024 lines (replay.rs:
#     4 queued, 1 being read, 1 being applied),
#     so "seen" is exact to within about 11,000 lines (~2,000 accounts) plus
#     STEP.
#  4. At each checkpoint (the first sample at or past it) it reports RSS,
#     peak RSS so far, events/s over the stage since the previous checkpoint,
#     and the state dir size.
#
# Output: a markdown table on stdout, and CSV (accounts,events_per_s,rss_mib)
# to $CSV (default benches/results/memory.csv); every sample in
# $OUT_DIR/memory-growth-samples.tsv.
#
# Environment (defaults in brackets):
#   ACCOUNTS [3000000]  CHECKPOINTS ["100000 250000 500000 1000000 1500000 2000000 2500000 3000000"]
#   SEED [42]  SAMPLE [1]  STEP [10000]
#   HISTORY             reuse this history file (must be the output of the same simulate)
#   KEEP_HISTORY [0]    keep the generated history file
#   WORK [mktemp -d]    where the history and state go (needs ~5 GB for 3 M accounts)
#   CSV [benches/results/memory.csv]  OUT_DIR [benches/results]
#   PQA_BIN             the binary (default $CARGO_TARGET_DIR/release/pqa-engine)
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS="${ACCOUNTS:-3000000}"
CHECKPOINTS="${CHECKPOINTS:-100000 250000 500000 1000000 1500000 2000000 2500000 3000000}"
SEED="${SEED:-42}"
SAMPLE="${SAMPLE:-1}"
STEP="${STEP:-10000}"
OUT_DIR="${OUT_DIR:-benches/results}"
CSV="${CSV:-$OUT_DIR/memory.csv}"
bin="${PQA_BIN:-${CARGO_TARGET_DIR:-target}/release/pqa-engine}"
[[ -x "$bin" ]] || { echo "no pqa-engine binary at $bin (cargo build --release)" >&2; exit 1; }
mkdir -p "$OUT_DIR"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/pqa-memgrowth.XXXXXX")}"
mkdir -p "$WORK"
state="$WORK/state"
rpid=""
cleanup() {
    [[ -n "$rpid" ]] && kill "$rpid" 2>/dev/null || true
    rm -rf "$state"
    if [[ -z "${HISTORY:-}" && "${KEEP_HISTORY:-0}" != 1 ]]; then rm -f "$WORK/history.ndjson"; fi
    rm -f "$WORK/curve.tsv"
}
trap cleanup EXIT
log() { echo "memory_growth: $*" >&2; }

history="${HISTORY:-$WORK/history.ndjson}"
if [[ -z "${HISTORY:-}" ]]; then
    log "simulate: $ACCOUNTS accounts, 1 day, seed $SEED -> $history"
    t0=$(date +%s.%N)
    "$bin" simulate --accounts "$ACCOUNTS" --days 1 --seed "$SEED" -o "$history"
    log "simulate took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
fi
total_lines=$(wc -l <"$history")
total_bytes=$(stat -c %s "$history")

log "accounts-seen curve (every $STEP new accounts) over $total_lines lines"
# accounts  line  byte_offset_after_that_line
LC_ALL=C awk -v step="$STEP" '
    { bytes += length($0) + 1
      i = index($0, "\"groupId\":\"")
      if (i > 0) {
          rest = substr($0, i + 11); id = substr(rest, 1, index(rest, "\"") - 1)
          if (!(id in seen)) { seen[id] = 1; n++; if (n % step == 0) print n "\t" NR "\t" bytes }
      }
    }
    END { print n "\t" NR "\t" bytes > "/dev/stderr" }' "$history" >"$WORK/curve.tsv" 2>"$WORK/curve.total"
read -r distinct _ _ <"$WORK/curve.total"
log "$distinct distinct accounts in $total_lines events ($(awk -v b="$total_bytes" 'BEGIN { printf "%.0f", b / 1048576 }') MiB)"
printf '%s\t%s\t%s\n' "$distinct" "$total_lines" "$total_bytes" >>"$WORK/curve.tsv"

# Accounts seen at byte position POS (the last curve point at or before it).
seen_at() { awk -v p="$1" '$3 <= p { a = $1; l = $2 } END { print (a ? a : 0) "\t" (l ? l : 0) }' "$WORK/curve.tsv"; }
# The line of the curve point for accounts >= A (the checkpoint's exact line).
line_of() { awk -v a="$1" '$1 >= a { print $2; exit }' "$WORK/curve.tsv"; }

log "replay (cache_accounts=${PQA_STATE__CACHE_ACCOUNTS:-100000 default}, block cache ${PQA_STATE__BLOCK_CACHE_BYTES:-128 MiB default})"
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s.%N)
"$bin" replay -i "$history" -o /dev/null --state-dir "$state" 2>"$WORK/replay.log" &
rpid=$!
fd=""
for _ in $(seq 1 100); do
    for f in /proc/$rpid/fd/*; do
        if [[ "$(readlink "$f" 2>/dev/null)" == "$(readlink -f "$history")" ]]; then fd="${f##*/}"; break 2; fi
    done
    sleep 0.1
done
[[ -n "$fd" ]] || { log "cannot find the replay's input fd"; exit 1; }

samples="$OUT_DIR/memory-growth-samples.tsv"
printf 'seconds\tpos_bytes\taccounts_seen\tlines_read\trss_mib\thwm_mib\tloadavg1\n' >"$samples"
read -ra cps <<<"$CHECKPOINTS"
ci=0
prev_t="$t_start"
prev_line=0
rows=()
echo "accounts,events_per_s,rss_mib" >"$CSV"
while kill -0 "$rpid" 2>/dev/null; do
    pos=$(awk '/^pos:/ { print $2 }' "/proc/$rpid/fdinfo/$fd" 2>/dev/null || echo "")
    rss=$(awk '/^VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$rpid/status" 2>/dev/null || echo "")
    hwm=$(awk '/^VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$rpid/status" 2>/dev/null || echo "")
    [[ -n "$pos" && -n "$rss" ]] || break
    now=$(date +%s.%N)
    read -r seen lines <<<"$(seen_at "$pos")"
    printf '%.1f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(awk -v a="$t_start" -v b="$now" 'BEGIN { print b - a }')" \
        "$pos" "$seen" "$lines" "$rss" "$hwm" "$(cut -d' ' -f1 /proc/loadavg)" >>"$samples"
    # A checkpoint is reached when the reader is past the line where its
    # account first appears and the engine is within the read-ahead of it.
    while ((ci < ${#cps[@]})) && ((seen >= cps[ci])); do
        cp=${cps[ci]}
        cl=$(line_of "$cp")
        rate=$(awk -v l="$lines" -v pl="$prev_line" -v a="$prev_t" -v b="$now" 'BEGIN { if (b - a > 0) printf "%.0f", (l - pl) / (b - a); else print "-" }')
        disk=$(du -sm "$state" 2>/dev/null | cut -f1)
        log "checkpoint $cp accounts (line $cl; sample at $seen accounts, line ~$lines): rss $rss MiB (peak $hwm), $rate events/s, state $disk MiB"
        rows+=("| $cp | $cl | $seen | $rate | $rss | $hwm | $disk | $(cut -d' ' -f1-3 /proc/loadavg) |")
        echo "$cp,$rate,$rss" >>"$CSV"
        prev_t="$now"
        prev_line="$lines"
        ci=$((ci + 1))
    done
    sleep "$SAMPLE"
done
wait "$rpid" || { log "replay failed:"; cat "$WORK/replay.log" >&2; exit 1; }
rpid=""
t_end=$(date +%s.%N)
# Checkpoints at the very end (the last accounts appear in the last lines).
final_hwm=$(awk 'NR > 1 && $6 > m { m = $6 } END { print m }' "$samples")
final_rss=$(tail -n 1 "$samples" | cut -f5)
while ((ci < ${#cps[@]})) && ((distinct >= cps[ci])); do
    cp=${cps[ci]}
    cl=$(line_of "$cp")
    rate=$(awk -v l="$total_lines" -v pl="$prev_line" -v a="$prev_t" -v b="$t_end" 'BEGIN { printf "%.0f", (l - pl) / (b - a) }')
    disk=$(du -sm "$state" 2>/dev/null | cut -f1)
    log "checkpoint $cp accounts at the end of the replay: last rss $final_rss MiB (peak $final_hwm), $rate events/s, state $disk MiB"
    rows+=("| $cp | $cl | $distinct (end) | $rate | $final_rss (last sample) | $final_hwm | $disk | $(cut -d' ' -f1-3 /proc/loadavg) |")
    echo "$cp,$rate,$final_rss" >>"$CSV"
    ci=$((ci + 1))
done
cat "$WORK/replay.log" >&2
echo
echo "machine: nproc $(nproc), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); load average at start $loadavg_start, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "history: $distinct accounts, $total_lines events, $(awk -v b="$total_bytes" 'BEGIN { printf "%.0f", b / 1048576 }') MiB; replay $(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.0f", b - a }') s, $(awk -v n="$total_lines" -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.0f", n / (b - a) }') events/s overall; peak RSS $final_hwm MiB"
echo
echo "| accounts seen | first appears at line | sampled at (accounts) | events/s in the stage before | RSS MiB | peak RSS so far MiB | state dir MiB | load average |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo
echo "csv: $CSV; samples: $samples"
