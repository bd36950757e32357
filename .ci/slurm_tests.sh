#!/usr/bin/env bash
# CI: the tests marked `slurm` (tests/test_slurm.py) against a single-node Slurm on localhost, installed and
# started here with .ci/local_slurm.sh (Debian's packages; needs root and apt) and stopped at the end. Where
# the cluster cannot be installed or started, the tests skip and say why (pytest -rs). ~1 min of set-up, the
# tests 5-9 min on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
started=0
stop() { if [ "$started" = 1 ]; then .ci/local_slurm.sh stop || true; fi; }
trap stop EXIT
t0=$(date +%s)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if .ci/local_slurm.sh install start; then
        started=1
        echo "slurm tests: cluster up in $(($(date +%s) - t0)) s"
    else
        echo "slurm tests: the local cluster did not start (see above); the tests will skip"
    fi
else
    echo "slurm tests: not root or no apt-get here, so no local cluster; the tests will skip"
fi
"$PY" -m pytest -m slurm -s -rs tests/test_slurm.py
echo "slurm tests: $(($(date +%s) - t0)) s in all"
