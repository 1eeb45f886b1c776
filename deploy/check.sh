#!/usr/bin/env bash
# Checks everything in deploy/ for real, on a fresh Debian machine with the
# Rust toolchain (it installs what it lacks with apt and pip):
#
#   1. alerts: `promtool check rules`, and `promtool test rules` (a firing
#      and a silent case for every alert);
#   2. the dashboard's JSON is sound (ids, layout, variables), and a real
#      Prometheus scrapes a running engine (`pqa-engine demo`) with
#      the alerts loaded: every alert evaluates without error, and every
#      dashboard panel's query returns data through the HTTP API (the few
#      that cannot in a short demo are listed in deploy/check.py, with why);
#   3. the Dockerfile passes hadolint;
#   4. the Kubernetes manifests render with `kubectl kustomize` (when kubectl
#      is installed) and validate against the Kubernetes 1.30 and 1.37
#      schemas offline; names, ports, probes and config agree;
#      prometheusrule.yaml is alerts.yml;
#   5. the compose file validates against the Compose Specification schema;
#      its files, topics and config agree;
#   6. the systemd unit passes `systemd-analyze verify` and `systemd-analyze
#      security --offline` at "OK" exposure or better;
#   7. every pqa-engine config file in deploy/ passes `pqa-engine validate`.
#
# tests/deploy.rs (cargo test --test deploy) checks that every metric the
# dashboard and the alerts name is exported by the engine.
#
#   bash deploy/check.sh
#   PQA_ENGINE_BIN=path/to/pqa-engine bash deploy/check.sh   # skip the build
#
# The engine binary: PQA_ENGINE_BIN, else the debug build that `cargo test`
# makes (built here if missing: seconds with a warm cache). The Python
# tools live in a venv under ~/.cache/pqa-engine/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

pass=0
fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
step() { echo; echo "== $*"; }
# Runs a check.py subcommand; its ok/FAIL lines count.
py_check() {
  local out rc=0
  out=$("$VENV/bin/python" deploy/check.py "$@" 2>&1) || rc=$?
  echo "$out"
  pass=$((pass + $(grep -c '^ok:' <<<"$out" || true)))
  fail=$((fail + $(grep -c '^FAIL:' <<<"$out" || true)))
  [ $rc -eq 0 ] || [ "$(grep -c '^FAIL:' <<<"$out" || true)" -gt 0 ] || bad "check.py $1 exited $rc"
}

# ------------------------------------------------------------- installs
need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
VENV=${PQA_DEPLOY_VENV:-$HOME/.cache/pqa-engine/deploy-venv}
if ! "$VENV/bin/python" -c 'import yaml, kubernetes_validate' 2>/dev/null ||
  ! cmp -s deploy/requirements-check.txt "$VENV/requirements-check.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r deploy/requirements-check.txt
  cp deploy/requirements-check.txt "$VENV/requirements-check.txt"
fi

BIN=${PQA_ENGINE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --quiet --bin pqa-engine
  target=$(cargo metadata --format-version 1 --no-deps | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  BIN="$target/debug/pqa-engine"
fi
[ -x "$BIN" ] || { echo "no pqa-engine binary at $BIN" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------- 1. promtool
step "alerts: promtool"
if out=$(promtool check rules deploy/prometheus/alerts.yml 2>&1); then
  ok "promtool check rules: $(grep -o '[0-9]* rules found' <<<"$out")"
else
  echo "$out"; bad "promtool check rules"
fi
if out=$(cd deploy/prometheus && promtool test rules alerts.test.yml 2>&1); then
  ok "promtool test rules deploy/prometheus/alerts.test.yml: $(grep -c 'alertname:' deploy/prometheus/alerts.test.yml) alert checks"
else
  echo "$out"; bad "promtool test rules"
fi
alerts=$(grep -o '^ *- alert: *[A-Za-z]*' deploy/prometheus/alerts.yml | awk '{print $3}')
missing=0
for a in $alerts; do
  grep -q "alertname: $a\$" deploy/prometheus/alerts.test.yml || { bad "alert $a has no unit test"; missing=1; }
  grep -q "^#### $a\$" README.md || { bad "alert $a has no runbook section (#### $a) in README.md"; missing=1; }
done
[ $missing -eq 1 ] || ok "every alert has unit tests and a runbook in README.md ($(wc -w <<<"$alerts") alerts)"

# ------------------------------------------------------------- 2. Prometheus
step "a real Prometheus scraping the demo"
py_check dashboard
free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The simulated product paced at 1 s a day: events flow for 90 s, longer
# than this check needs.
"$BIN" demo --http-addr 127.0.0.1:0 --accounts 200 --day-ms 1000 >"$work/demo.out" 2>"$work/demo.err" &
pids+=($!)
engine_port=""
for _ in $(seq 1 300); do
  engine_port=$(grep -o 'http://127.0.0.1:[0-9]*/metrics' "$work/demo.out" | head -n 1 | sed 's#.*:\([0-9]*\)/metrics#\1#' || true)
  [ -n "$engine_port" ] && break
  sleep 0.1
done
[ -n "$engine_port" ] || { cat "$work/demo.out" "$work/demo.err"; bad "the demo did not start"; exit 1; }
prom_port=$(free_port)
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: pqa-engine
    static_configs:
      - targets: ["127.0.0.1:$engine_port"]
EOF
promtool check config "$work/prometheus.yml" >/dev/null && ok "promtool check config (scrape job pqa-engine, alerts.yml)" || bad "promtool check config"
sed "s#/etc/prometheus/alerts.yml#$ROOT/deploy/prometheus/alerts.yml#" deploy/compose/prometheus.yml >"$work/compose-prometheus.yml"
promtool check config "$work/compose-prometheus.yml" >/dev/null && ok "promtool check config deploy/compose/prometheus.yml" || bad "promtool check config deploy/compose/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
PROM="http://127.0.0.1:$prom_port"
q() { curl -s --get "$PROM/api/v1/query" --data-urlencode "query=$1" | "$VENV/bin/python" -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null || true; }
# Ready when the target has been scraped for 20 s (rate windows of 15 s
# hold several samples), batches are being committed, and a PQA was counted.
ready=""
deadline=$((SECONDS + 120))
while [ $SECONDS -lt $deadline ]; do
  scrapes=$(q 'count_over_time(up{job="pqa-engine"}[1m])')
  batches=$(q 'sum(rate(pqa_batches_total[15s]))')
  pqas=$(q 'sum(pqa_qualified_total)')
  if [ "${scrapes%.*}" -ge 20 ] 2>/dev/null && [ -n "$batches" ] && [ "$batches" != 0 ] && [ -n "$pqas" ]; then
    ready=1
    break
  fi
  sleep 1
done
if [ -z "$ready" ]; then
  tail -n 20 "$work/prometheus.log" "$work/demo.err"
  bad "Prometheus did not scrape the demo with data within 120 s (scrapes=$scrapes batches=$batches pqas=$pqas)"
else
  ok "Prometheus scraped the demo $scrapes times; $pqas PQAs counted so far"
  py_check rules "$PROM"
  py_check queries "$PROM"
  # A picture of the dashboard from this Prometheus's data (optional):
  # PQA_DASHBOARD_PNG=deploy/grafana/pqa-engine.png bash deploy/check.sh
  if [ -n "${PQA_DASHBOARD_PNG:-}" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib==3.11.2
    sleep 150 # the simulated 90 days take 90 s; draw the whole run
    py_check render "$PROM" "$PQA_DASHBOARD_PNG"
  fi
fi

# ------------------------------------------------------------- 3. Dockerfile
step "Dockerfile: hadolint"
if out=$("$VENV/bin/hadolint" deploy/docker/Dockerfile 2>&1); then
  ok "hadolint deploy/docker/Dockerfile: no finding"
else
  echo "$out"; bad "hadolint deploy/docker/Dockerfile"
fi
for want in 'STOPSIGNAL SIGTERM' 'HEALTHCHECK' '/healthz' 'USER 10001' 'VOLUME' 'PQA_HTTP__ADDR=0.0.0.0:9464' 'AS build' 'AS runtime'; do
  grep -q -- "$want" deploy/docker/Dockerfile || bad "the Dockerfile lacks $want"
done
ok "the Dockerfile is multi-stage, non-root, with a volume, STOPSIGNAL SIGTERM, a /healthz HEALTHCHECK and HTTP on 0.0.0.0"

# ------------------------------------------------------------- 4. Kubernetes
step "Kubernetes manifests"
py_check prometheusrule
if command -v kubectl >/dev/null; then
  py_check manifests "$BIN"
else
  echo "note: kubectl is not installed: kustomize rendering and schema validation skipped"
fi

# ------------------------------------------------------------- 5. compose
step "docker compose"
if out=$("$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml 2>&1); then
  ok "deploy/compose/compose.yaml is valid against the Compose Specification schema"
else
  echo "$out"; bad "compose file against the Compose Specification schema"
fi
py_check compose "$BIN"

# ------------------------------------------------------------- 6. systemd
step "systemd unit"
sed "s#^ExecStart=/usr/local/bin/pqa-engine #ExecStart=$BIN #" deploy/systemd/pqa-engine.service >"$work/pqa-engine.service"
# verify wants ExecStart's binary to exist: the unit is checked with the
# path of the binary built here instead of /usr/local/bin/pqa-engine.
if out=$(systemd-analyze verify "$work/pqa-engine.service" 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify deploy/systemd/pqa-engine.service: no warning"
else
  echo "$out"; bad "systemd-analyze verify deploy/systemd/pqa-engine.service"
fi
exposure=$(systemd-analyze security --offline=true "$work/pqa-engine.service" 2>/dev/null | grep -o 'Overall exposure level.*' || true)
if grep -q ' OK\| SAFE' <<<"$exposure"; then ok "systemd-analyze security: ${exposure#*: }"; else bad "systemd-analyze security: $exposure"; fi
for cfg in deploy/systemd/pqa-engine.toml; do
  if out=$("$BIN" validate --config "$cfg" 2>&1); then ok "$cfg: $out"; else echo "$out"; bad "$cfg does not validate"; fi
done

echo
echo "deploy: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
