#!/usr/bin/env bash
# One `pqa-engine run` over a topic already loaded on the benchmark broker
# (benches/broker.sh), with a fresh state and consumer group: prints where the
# batch time went (the engine's own histograms), the CPU seconds of each busy
# thread and of the whole process, and the steady rate (events / time from
# the first processed event to the last, as benches/compare.sh counts it),
# with the batches cut and the process's peak RSS, and the rate over the second half of
# the events (after the first touch of most of the working set).
# For A/B runs of two binaries on the same topic without reloading it.
#
#   bash benches/run_topic.sh BIN TOPIC EVENTS
#   OUT=other.topic bash benches/run_topic.sh BIN TOPIC EVENTS   # output topic (default bench.out)
#   KAFKA_TOML='changelog = false' bash benches/run_topic.sh ...  # more lines in the [kafka] table
#   STATE_TOML="cache_accounts = 250000" bash benches/run_topic.sh ...  # more lines in the [state] table
#
# The output and dead-letter topics must exist (benches/broker.sh create-topic).
# Environment: TANSU_PORT [19092].
set -uo pipefail
BIN=$1 TOPIC=$2 N=$3
PORT_BROKER="${TANSU_PORT:-19092}"
W="$(mktemp -d "${TMPDIR:-/tmp}/pqa-run-topic.XXXXXX")"
P=""
trap '[[ -n "$P" ]] && { kill -TERM "$P" 2>/dev/null; wait "$P" 2>/dev/null; }; rm -rf "$W"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$W/c.toml" <<TOML
[kafka]
bootstrap_servers = "127.0.0.1:$PORT_BROKER"
group_id = "run-topic-$(basename "$W")"
input_topics = ["$TOPIC"]
output_topic = "${OUT:-bench.out}"
dlq_topic = "${DLQ:-bench.dlq}"
${KAFKA_TOML:-}
[state]
dir = "$W/state"
${STATE_TOML:-}
[http]
addr = "127.0.0.1:$port"
TOML
now() { date +%s.%N; }
RUST_LOG=warn "$BIN" run --config "$W/c.toml" 2>"$W/log" &
P=$!
t_first="" n_first=0 t_half="" n_half=0
while :; do
    kill -0 "$P" 2>/dev/null || { echo "run-topic: the engine exited:" >&2; cat "$W/log" >&2; exit 1; }
    n="$(curl -sf "http://127.0.0.1:$port/metrics" | awk '$1 == "pqa_batch_messages_sum" { print $2 }')"
    n="${n:-0}"; n="${n%.*}"
    if [[ -z "$t_first" && "$n" -gt 0 ]]; then t_first="$(now)"; n_first="$n"; fi
    if [[ -z "$t_half" && "$n" -ge $((N / 2)) ]]; then t_half="$(now)"; n_half="$n"; fi
    if [[ "$n" -ge "$N" ]]; then t_last="$(now)"; break; fi
    sleep 0.05
done
curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^pqa_batch_duration_seconds_sum/ { match($1, /stage="[^"]*"/); st = substr($1, RSTART + 7, RLENGTH - 8)
         # (One event in 16 is timed in `apply`: scaled to the whole.)
         printf "%s=%.2fs ", st, (st == "apply" ? 16 : 1) * $2 }
         $1 == "pqa_batch_messages_count" { printf "batches=%d ", $2 }
         $1 == "pqa_changelog_records_total" { printf "changelog_records=%d ", $2 } END { print "" }'
clk="$(getconf CLK_TCK)"
for t in /proc/"$P"/task/*; do
    awk -v c="$clk" '{ s = ($14 + $15) / c; if (s > 0.2) printf "%s %.2f\n", $2, s }' "$t/stat" 2>/dev/null
done | sort -k2 -nr | head -8 | tr '\n' ' '
awk -v c="$clk" '{ printf "| process cpu %.2f s", ($14 + $15) / c }' "/proc/$P/stat"
awk '$1 == "VmHWM:" { printf ", max rss %d MiB\n", $2 / 1024 }' "/proc/$P/status"
awk -v n="$N" -v nf="$n_first" -v tf="$t_first" -v nh="$n_half" -v th="$t_half" -v tl="$t_last" \
    'BEGIN { printf "rate %.0f events/s (second half %.0f)\n", (n - nf) / (tl - tf), (n - nh) / (tl - th) }'
