#!/usr/bin/env bash
# Runs benches/plot.py in its own venv with the pinned matplotlib
# (benches/requirements-plot.txt), installing it the first time, the same way
# benches/compare.sh sets up Quix Streams. Arguments go to plot.py:
#
#   bash benches/plot.sh latency RUN.csv [--label NAME]      # -> benches/plots/latency.png
#   bash benches/plot.sh throughput accounts.csv             # -> benches/plots/throughput_vs_accounts.png
#
# Environment: PQA_BENCH_HOME [~/.cache/pqa-bench] (the venv is $PQA_BENCH_HOME/venv-plot);
# PYTHON [python3] the interpreter that creates the venv.
set -euo pipefail

cd "$(dirname "$0")/.."
PQA_BENCH_HOME="${PQA_BENCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pqa-bench}"
VENV="$PQA_BENCH_HOME/venv-plot"
PY="$VENV/bin/python"

if ! "${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "plot.sh: installing python3-venv (apt-get)" >&2
    SUDO=""
    [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi
want="$(grep -i '^matplotlib==' benches/requirements-plot.txt | cut -d= -f3)"
have="$("$PY" -c 'import matplotlib; print(matplotlib.__version__)' 2>/dev/null || true)"
if [[ "$have" != "$want" ]]; then
    echo "plot.sh: installing matplotlib $want into $VENV" >&2
    mkdir -p "$PQA_BENCH_HOME"
    [[ -x "$PY" ]] || "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/requirements-plot.txt
fi
exec "$PY" benches/plot.py "$@"
