#!/usr/bin/env bash
# Memory with a growing number of accounts: replays a simulated history whose
# account count grows to ACCOUNTS (default 1,000,000) and samples the
# replay's RSS every few seconds. The cache (state.cache_accounts) bounds the
# heap; everything else is in RocksDB.
#
#   cargo build --release && bash benches/memory.sh [ACCOUNTS] [EVENTS]
set -euo pipefail
accounts=${1:-1000000}
events=${2:-10000000}
bin=${PQA_BIN:-${CARGO_TARGET_DIR:-target}/release/pqa-engine}
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
"$bin" simulate --accounts "$accounts" --days 9 --max-events "$events" -o - 2>/dev/null |
  "$bin" replay -i - -o /dev/null --state-dir "$state" &
sleep 1
pid=$(pgrep -n -f "replay -i - -o /dev/null --state-dir $state")
start=$(date +%s)
echo "seconds  rss_mib  state_dir_mib"
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || echo 0)
  disk=$(du -sm "$state" 2>/dev/null | cut -f1)
  echo "$(( $(date +%s) - start ))  $rss  $disk"
  sleep 10
done
wait
