#!/usr/bin/env bash
# A real Kafka-compatible broker for the benchmarks: tansu (Apache Kafka
# protocol, written in Rust, from crates.io) with in-memory storage on a
# loopback port. librdkafka's mock cluster keeps only 5 MiB per partition, too
# little to preload millions of events.
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
#   TANSU_VERSION   version installed when missing (default 0.6.0)
#   TANSU           a tansu binary to use instead of looking for one
#
# The first `start` on a machine runs `cargo install tansu --locked --features
# dynostore`, which compiles for about 15 minutes on 2 cores.
set -euo pipefail

PORT="${TANSU_PORT:-19092}"
HOME_DIR="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
VERSION="${TANSU_VERSION:-0.6.0}"
RUN_DIR="$HOME_DIR/run"
PID_FILE="$RUN_DIR/tansu-$PORT.pid"
LOG_FILE="$RUN_DIR/tansu-$PORT.log"
URL="tcp://127.0.0.1:$PORT"

die() { echo "broker.sh: $*" >&2; exit 1; }

tansu_bin() {
    if [[ -n "${TANSU:-}" ]]; then echo "$TANSU"; return; fi
    if [[ -x "$HOME_DIR/tansu/bin/tansu" ]]; then echo "$HOME_DIR/tansu/bin/tansu"; return; fi
    command -v tansu 2>/dev/null || true
}

install_tansu() {
    local bin
    bin="$(tansu_bin)"
    if [[ -n "$bin" ]]; then echo "$bin"; return; fi
    command -v cargo >/dev/null || die "cargo is needed to install tansu"
    echo "broker.sh: installing tansu $VERSION into $HOME_DIR/tansu (cargo install, ~15 min the first time)" >&2
    mkdir -p "$HOME_DIR"
    cargo install tansu --version "$VERSION" --locked --features dynostore --root "$HOME_DIR/tansu" >&2 \
        || die "cargo install tansu failed"
    echo "$HOME_DIR/tansu/bin/tansu"
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
    # Its own session (setsid), so it outlives this script and a Ctrl-C in the
    # caller's terminal; `stop` ends it by its pid.
    setsid "$bin" broker --listener-url "$URL" --advertised-listener-url "$URL" \
        --storage-engine memory://tansu/ >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 300); do
        if accepts; then
            # A protocol round trip, not only an open port.
            if "$bin" topic list --broker "$URL" >/dev/null 2>&1; then
                echo "broker.sh: tansu $("$bin" --version | awk '{print $2}') on 127.0.0.1:$PORT (pid $(cat "$PID_FILE"), log $LOG_FILE)" >&2
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
status) if running; then echo "running, pid $(cat "$PID_FILE"), 127.0.0.1:$PORT"; else echo "stopped"; exit 1; fi ;;
address) echo "127.0.0.1:$PORT" ;;
*) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
