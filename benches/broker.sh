#!/usr/bin/env bash
# A real Kafka-compatible broker for the benchmarks and cross-process tests:
# tansu (Apache Kafka protocol, written in Rust, from crates.io) on a loopback
# port. librdkafka's mock cluster keeps only 5 MiB per partition, too little
# to preload millions of events.
#
# Storage (TANSU_STORAGE):
#   sqlite   (default) tansu's per-record SQLite engine, in a file under the run
#            dir, wiped at each `start`. It keeps what it acknowledges and
#            returns a fetch at any offset correctly. Too slow for `run` at
#            benchmark rates: the changelog's writes back up, heartbeats time
#            out and the engine stalls (BENCHMARKS.md, "The latency split").
#            Throughput and latency runs use TANSU_STORAGE=memory.
#   memory   tansu's in-memory engine: faster, but tansu 0.6.0 answers a fetch
#            at an offset inside a record batch with the batches that start
#            after it (the rest of that batch is silently skipped) and states
#            the end of a partition as the start of its last batch plus one.
#            The engine detects and recovers both (README, "Brokers"); use it
#            to reproduce them, or for raw throughput.
#
#   benches/broker.sh start                      install tansu if missing, start it, wait until it accepts
#   benches/broker.sh create-topic NAME [PARTITIONS] [KEY=VALUE ...]
#                                                create a topic (default 2 partitions,
#                                                retention.ms=-1 retention.bytes=-1 unless given)
#   benches/broker.sh stop                       stop the broker started by `start` (its data is gone)
#   benches/broker.sh status | address
#
# Environment:
#   TANSU_PORT      loopback port (default 19092)
#   PQA_BENCH_HOME  where tansu is installed and the pid/log live
#                   (default ${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench)
#   TANSU_STORAGE   sqlite (default) or memory
#   TANSU_VERSION   version installed when missing (default 0.6.0)
#   TANSU           a tansu binary to use instead of looking for one (it needs
#                   the libsql feature for sqlite, dynostore for memory)
#
# The first `start` on a machine runs `cargo install tansu --locked --features
# dynostore,libsql`, which compiles for about 20 minutes on 2 cores.
set -euo pipefail

PORT="${TANSU_PORT:-19092}"
HOME_DIR="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
VERSION="${TANSU_VERSION:-0.6.0}"
STORAGE="${TANSU_STORAGE:-sqlite}"
FEATURES="dynostore,libsql"
# The features are in the path: an older install without libsql is not used.
INSTALL_DIR="$HOME_DIR/tansu-$VERSION-${FEATURES/,/-}"
RUN_DIR="$HOME_DIR/run"
PID_FILE="$RUN_DIR/tansu-$PORT.pid"
LOG_FILE="$RUN_DIR/tansu-$PORT.log"
DATA_DIR="$RUN_DIR/tansu-$PORT-data"
URL="tcp://127.0.0.1:$PORT"

die() { echo "broker.sh: $*" >&2; exit 1; }

tansu_bin() {
    if [[ -n "${TANSU:-}" ]]; then echo "$TANSU"; return; fi
    if [[ -x "$INSTALL_DIR/bin/tansu" ]]; then echo "$INSTALL_DIR/bin/tansu"; return; fi
}

install_tansu() {
    local bin
    bin="$(tansu_bin)"
    if [[ -n "$bin" ]]; then echo "$bin"; return; fi
    command -v cargo >/dev/null || die "cargo is needed to install tansu"
    echo "broker.sh: installing tansu $VERSION ($FEATURES) into $INSTALL_DIR (cargo install, ~20 min the first time)" >&2
    mkdir -p "$HOME_DIR"
    cargo install tansu --version "$VERSION" --locked --features "$FEATURES" --root "$INSTALL_DIR" >&2 \
        || die "cargo install tansu failed"
    echo "$INSTALL_DIR/bin/tansu"
}

storage_url() {
    case "$STORAGE" in
    memory) echo "memory://tansu/" ;;
    # tansu opens sqlite://NAME relative to its working directory.
    sqlite) echo "sqlite://tansu.db" ;;
    *) die "TANSU_STORAGE must be sqlite or memory, not $STORAGE" ;;
    esac
}

running() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start() {
    local bin
    bin="$(install_tansu)"
    mkdir -p "$RUN_DIR"
    if running; then
        echo "broker.sh: tansu already running (pid $(cat "$PID_FILE")) on $URL" >&2
        return 0
    fi
    accepts && die "port $PORT is taken by another process (set TANSU_PORT)"
    local url
    url="$(storage_url)"
    # A fresh broker each start: the old data goes.
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    # Its own session (setsid), so it outlives this script and a Ctrl-C in the
    # caller's terminal; `stop` ends it by its pid.
    (cd "$DATA_DIR" && exec setsid "$bin" broker --listener-url "$URL" --advertised-listener-url "$URL" \
        --storage-engine "$url" >"$LOG_FILE" 2>&1 </dev/null) &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 300); do
        if accepts; then
            # A protocol round trip, not only an open port.
            if "$bin" topic list --broker "$URL" >/dev/null 2>&1; then
                echo "broker.sh: tansu $("$bin" --version | awk '{print $2}') ($STORAGE storage) on 127.0.0.1:$PORT (pid $(cat "$PID_FILE"), log $LOG_FILE)" >&2
                return 0
            fi
        fi
        running || { cat "$LOG_FILE" >&2; die "tansu exited"; }
        sleep 0.1
    done
    die "tansu did not accept connections within 30 s (log: $LOG_FILE)"
}

stop() {
    if ! running; then
        rm -f "$PID_FILE"
        echo "broker.sh: not running" >&2
        return 0
    fi
    local pid
    pid="$(cat "$PID_FILE")"
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PID_FILE"
    echo "broker.sh: stopped tansu (pid $pid)" >&2
}

create_topic() {
    local name="${1:?usage: broker.sh create-topic NAME [PARTITIONS] [KEY=VALUE ...]}"
    local partitions="${2:-2}"
    shift $(($# < 2 ? $# : 2))
    local bin
    bin="$(tansu_bin)"
    [[ -n "$bin" ]] || die "tansu is not installed: run broker.sh start"
    running || die "tansu is not running: run broker.sh start"
    local configs=("$@")
    if [[ ${#configs[@]} -eq 0 ]]; then
        # Quix Streams refuses topics whose retention is not infinite.
        configs=(retention.ms=-1 retention.bytes=-1)
    fi
    local args=()
    for c in "${configs[@]}"; do args+=(--config "$c"); done
    "$bin" topic create --broker "$URL" --partitions "$partitions" "${args[@]}" "$name" >/dev/null \
        || die "cannot create topic $name"
    echo "broker.sh: topic $name ($partitions partitions, ${configs[*]})" >&2
}

case "${1:-}" in
start) start ;;
stop) stop ;;
create-topic) shift; create_topic "$@" ;;
status) if running; then echo "running, pid $(cat "$PID_FILE"), 127.0.0.1:$PORT, $(tr '\0' ' ' <"/proc/$(cat "$PID_FILE")/cmdline" | grep -o 'storage-engine [^ ]*')"; else echo "stopped"; exit 1; fi ;;
address) echo "127.0.0.1:$PORT" ;;
*) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
