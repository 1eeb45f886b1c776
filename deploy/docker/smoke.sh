#!/usr/bin/env bash
# Builds the container image of deploy/docker/Dockerfile around a pqa-engine
# binary built on this machine (stage `prebuilt`), runs it with podman and
# probes it:
#   - image: user 10001, STOPSIGNAL SIGTERM, a HEALTHCHECK, port 9464, the
#     state volume, HTTP on 0.0.0.0 inside;
#   - `run` with no reachable broker: /healthz 200 through the published
#     port, /readyz 503, RocksDB state written to the volume as uid 10001,
#     the HEALTHCHECK healthy, `podman stop` (SIGTERM) exits 0;
#   - `demo`: PQAs appear in /metrics; the container's peak RSS.
#
#   bash deploy/docker/smoke.sh            # uses target/release/pqa-engine
#   PQA_ENGINE_BIN=path bash deploy/docker/smoke.sh
#
# Registries for images (docker.io) are not reachable on the machines this
# project is built on, so the base image is made from Debian's packages
# with mmdebstrap (a Debian 12 minbase: what debian:bookworm-slim is) and
# passed as RUNTIME_IMAGE. Where docker.io is reachable, set
# RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim to use the real one.
#
# podman needs two settings on this sandbox, overridable here: crun refuses
# its cgroup set-up ("cgroups in hybrid mode not supported"), so runc is the
# runtime (PODMAN_RUNTIME); the process lacks CAP_SYS_RESOURCE, so the
# container's ulimits must not exceed the caller's (PODMAN_ULIMITS).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${PQA_ENGINE_BIN:-${CARGO_TARGET_DIR:-target}/release/pqa-engine}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-localhost/pqa-debian:bookworm-slim}
PODMAN_RUNTIME=${PODMAN_RUNTIME:-runc}
read -r -a ULIMITS <<<"${PODMAN_ULIMITS:---ulimit nofile=16384:16384 --ulimit nproc=4096:4096}"
IMAGE=localhost/pqa-engine:smoke
TAG=pqa-smoke-$$
pass=0
fail=0

ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
podman() { command podman --runtime "$PODMAN_RUNTIME" "$@"; }

[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release --bin pqa-engine, or set PQA_ENGINE_BIN" >&2; exit 2; }

need=()
for pkg in podman runc mmdebstrap binutils curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

work=$(mktemp -d)
cleanup() {
  podman rm -f "$TAG-run" "$TAG-demo" >/dev/null 2>&1 || true
  podman volume rm -f "$TAG-state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$RUNTIME_IMAGE" = localhost/pqa-debian:bookworm-slim ] && ! podman image exists "$RUNTIME_IMAGE"; then
  echo "making $RUNTIME_IMAGE from Debian's packages (mmdebstrap, once)"
  mmdebstrap --quiet --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/rootfs.tar" http://deb.debian.org/debian
  podman import --change 'CMD ["bash"]' "$work/rootfs.tar" "$RUNTIME_IMAGE" >/dev/null
  rm -f "$work/rootfs.tar"
fi

# The binary, stripped of its debug info as the `build` stage does.
mkdir -p "$work/ctx"
strip -o "$work/ctx/pqa-engine" "$BIN"
echo "building $IMAGE (stage prebuilt, base $RUNTIME_IMAGE)"
podman build --quiet --format docker "${ULIMITS[@]}" -f deploy/docker/Dockerfile --target prebuilt \
  --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" --build-arg BINARY=pqa-engine -t "$IMAGE" "$work/ctx" >/dev/null
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
ok "image built: $((size / 1024 / 1024)) MiB ($(du -m "$work/ctx/pqa-engine" | cut -f1) MiB of it the stripped binary)"

cfg() { podman image inspect "$IMAGE" --format "$1"; }
[ "$(cfg '{{.Config.User}}')" = "10001:10001" ] && ok "runs as user 10001" || bad "user is $(cfg '{{.Config.User}}')"
[ "$(cfg '{{.Config.StopSignal}}')" = "SIGTERM" ] && ok "STOPSIGNAL SIGTERM" || bad "stop signal $(cfg '{{.Config.StopSignal}}')"
cfg '{{json .Config.Healthcheck}}' | grep -q healthz && ok "HEALTHCHECK on /healthz" || bad "no healthcheck"
cfg '{{json .Config.Volumes}}' | grep -q /var/lib/pqa-engine && ok "volume /var/lib/pqa-engine" || bad "no state volume"
cfg '{{json .Config.Env}}' | grep -q 'PQA_HTTP__ADDR=0.0.0.0:9464' && ok "HTTP on 0.0.0.0:9464 inside" || bad "PQA_HTTP__ADDR not set"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2" || true; }
wait_http() { # port path code seconds
  local i
  for ((i = 0; i < $4 * 5; i++)); do
    [ "$(http "$1" "$2")" = "$3" ] && return 0
    sleep 0.2
  done
  return 1
}

# `run` with no broker: alive, not ready, state on the volume.
port=$(free_port)
podman volume create "$TAG-state" >/dev/null
podman run -d --name "$TAG-run" "${ULIMITS[@]}" -p "127.0.0.1:$port:9464" -v "$TAG-state:/var/lib/pqa-engine" \
  -e PQA_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1 -e PQA_KAFKA__CHANGELOG=false "$IMAGE" >/dev/null
if wait_http "$port" /healthz 200 30; then ok "run: /healthz 200 through the published port"; else bad "run: /healthz never 200"; podman logs "$TAG-run" | tail -20; fi
code=$(http "$port" /readyz)
[ "$code" = 503 ] && ok "run: /readyz 503 with no broker ($(curl -s "http://127.0.0.1:$port/readyz" | head -n 1))" || bad "run: /readyz $code"
[ "$(podman exec "$TAG-run" id -u)" = 10001 ] && ok "run: the process is uid 10001" || bad "run: not uid 10001"
owner=$(podman exec "$TAG-run" stat -c %u /var/lib/pqa-engine/pqa-state/CURRENT 2>/dev/null || echo none)
[ "$owner" = 10001 ] && ok "run: RocksDB state written to the volume by uid 10001" || bad "run: state owner $owner"
if podman healthcheck run "$TAG-run" >/dev/null 2>&1; then ok "run: HEALTHCHECK healthy"; else bad "run: HEALTHCHECK unhealthy"; fi
t0=$(date +%s%N)
podman stop -t 90 "$TAG-run" >/dev/null
t1=$(date +%s%N)
exit_code=$(podman inspect "$TAG-run" --format '{{.State.ExitCode}}')
[ "$exit_code" = 0 ] && ok "run: podman stop (SIGTERM) -> exit 0 in $(((t1 - t0) / 1000000)) ms" || bad "run: exit code $exit_code after SIGTERM"
podman logs "$TAG-run" 2>&1 | grep -q "stopped cleanly" && ok "run: logged 'stopped cleanly'" || bad "run: no clean stop in the log"

# The demo in the container: PQAs in /metrics, peak RSS.
port=$(free_port)
podman run -d --name "$TAG-demo" "${ULIMITS[@]}" -p "127.0.0.1:$port:9464" "$IMAGE" demo --http-addr 0.0.0.0:9464 >/dev/null
seen=""
for ((i = 0; i < 300; i++)); do
  if curl -s "http://127.0.0.1:$port/metrics" | grep -q '^pqa_qualified_total{'; then seen=1; break; fi
  sleep 0.2
done
[ -n "$seen" ] && ok "demo: PQAs counted in /metrics" || bad "demo: no pqa_qualified_total"
sleep 20
pid=$(podman inspect "$TAG-demo" --format '{{.State.Pid}}')
hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
ok "demo: peak RSS ${hwm} MiB after 25 s (300 accounts, embedded Kafka and simulator in the same process)"
podman stop -t 90 "$TAG-demo" >/dev/null
exit_code=$(podman inspect "$TAG-demo" --format '{{.State.ExitCode}}')
[ "$exit_code" = 0 ] && ok "demo: SIGTERM -> exit 0" || bad "demo: exit code $exit_code"

echo "smoke: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
