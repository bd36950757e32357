#!/usr/bin/env bash
# `pip install .` works outside the checkout (issue 14). Builds the wheel from a copy of the sources, installs it
# (non-editable, --no-deps) into a fresh venv that sees the project venv's dependencies but not its editable
# hmem_lit, and from a directory outside the checkout checks that the installed copy is the one imported, that
# `hmem list` finds the shipped experiments and sweeps, that a shipped experiment and sweep resolve and train,
# that `hmem bench` is refused in one line (exit 2), that `hmem quickstart --small` runs end to end, and that
# nothing was written inside the installed package. Offline once the project venv exists (the build uses its
# setuptools; without one, pip fetches setuptools from the package index).
#
#   .ci/check_install.sh            # PY=<python of a venv with the dependencies> (default .venv/bin/python)
#   SKIP_QUICKSTART=1 .ci/check_install.sh   # everything but the quickstart (~1 min instead of ~3-5)
#   KEEP=1 .ci/check_install.sh     # keep the work directory for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hmem-install.XXXXXX")
if [[ -z "${KEEP:-}" ]]; then trap 'rm -rf "$WORK"' EXIT; else echo "[install] work directory: $WORK"; fi
unset PYTHONPATH
t0=$SECONDS
step() { echo "[install] $(( SECONDS - t0 ))s: $*"; }
fail() { echo "[install] FAILED: $*" >&2; exit 1; }

step "copying the sources (what an sdist carries) and building the wheel"
mkdir -p "$WORK/src"
cp -r pyproject.toml setup.py MANIFEST.in README.md constraints.txt hmem_lit experiments sweeps analysis "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$WORK/src/hmem_lit/_shipped"
iso=()
"$PY" -c "import setuptools" 2>/dev/null && iso=(--no-build-isolation)
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps "${iso[@]}" -w "$WORK/wheel" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { tail -20 "$WORK/build.log"; fail "wheel build"; }
WHEEL=$(ls "$WORK"/wheel/hmem_lit-*.whl)
contents=$("$PY" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$WHEEL")
for f in experiments/*.yaml sweeps/*.yaml analysis/*.yaml; do
    grep -qx "hmem_lit/_shipped/$f" <<<"$contents" || fail "$f is not in the wheel"
done
! grep -q "^benchmarks/\|^tests/" <<<"$contents" || fail "the wheel carries benchmarks/ or tests/"

step "installing it into a fresh venv (dependencies from $PY's site-packages, no editable hmem_lit)"
"$PY" -m venv --without-pip "$WORK/venv"  # empty: nothing of its own shadows the dependencies below
V="$WORK/venv/bin"
deps=$("$PY" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' | sort -u)
site=$("$V/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Plain path lines: the directories join sys.path after the venv's own site-packages, and their .pth files (the
# editable install's finder among them) are not processed.
echo "$deps" >"$site/_hmem_check_deps.pth"
"$PY" -m pip --python "$V/python" install -q --disable-pip-version-check --no-deps --no-index "$WHEEL"

mkdir -p "$WORK/elsewhere" && cd "$WORK/elsewhere"
touch "$WORK/installed.stamp"
where=$("$V/python" -c 'import hmem_lit, hmem_lit.resources as r; print(hmem_lit.__file__); print(r.checkout_root()); print(r.shipped_dir("experiments"))')
echo "$where" | sed 's/^/[install]   /'
[[ $(sed -n 1p <<<"$where") == "$site/hmem_lit/__init__.py" ]] || fail "imported hmem_lit is not the installed copy"
[[ $(sed -n 2p <<<"$where") == None ]] || fail "the installed copy believes it runs from a checkout"
[[ $(sed -n 3p <<<"$where") == "$site/hmem_lit/_shipped/experiments" ]] || fail "shipped experiments not in the package"

step "hmem list / info / sweep plan from $WORK/elsewhere"
"$V/hmem" list >list.txt
for name in 000_debug 100_quickstart 102_qs_memory memory_type fetch_ratio placement; do
    grep -qE "^  $name( |$)" list.txt || { cat list.txt; fail "hmem list does not list $name"; }  # name, then its question
done
"$V/hmem" info 102_qs_memory >/dev/null || fail "hmem info 102_qs_memory (an experiment with base:)"
"$V/hmem" sweep plan memory_type >/dev/null || fail "hmem sweep plan memory_type (a shipped sweep and its base)"

step "hmem bench outside a checkout: one line, exit 2"
rc=0; "$V/hmem" bench 2>bench.err || rc=$?
[[ $rc == 2 && $(wc -l <bench.err) == 1 ]] && grep -q "source checkout" bench.err || { cat bench.err; fail "hmem bench (rc $rc)"; }

step "hmem train 000_debug (shortened), then hmem report of it (default output: ./analysis/generated/)"
"$V/hmem" train 000_debug out_dir="$WORK/runs" train.max_tokens=20000 train.progress=false >train.log 2>&1 \
    || { tail -20 train.log; fail "hmem train 000_debug"; }
"$V/python" - "$WORK/runs" <<'EOF' || fail "the debug run is incomplete or has a checkout's git sha"
import json, sys
from pathlib import Path
run = next(Path(sys.argv[1]).glob("*/debug"))
final, man = json.loads((run / "final.json").read_text()), json.loads((run / "manifest.json").read_text())
assert final["status"] == "complete" and man["git_sha"] is None and man["packages"]["hmem_lit"], (final, man)
EOF
"$V/hmem" report "$WORK/runs" >report.log 2>&1 || { tail -20 report.log; fail "hmem report"; }
[[ -f analysis/generated/runs/report.html ]] || fail "hmem report did not write ./analysis/generated/runs/"

if [[ -z "${SKIP_QUICKSTART:-}" ]]; then
    step "hmem quickstart --small (data, 5 runs, evaluation, report)"
    "$V/hmem" quickstart --small >qs.log 2>&1 || { tail -30 qs.log; fail "hmem quickstart --small"; }
    [[ -f runs/quickstart_small/report/report.html ]] || fail "no quickstart report"
    tail -3 qs.log | sed 's/^/[install]   /'
fi

written=$(find "$site/hmem_lit" -newer "$WORK/installed.stamp" -type f ! -name "*.pyc")
[[ -z "$written" ]] || fail "files written inside the installed package: $written"
step "OK: the installed package works outside the checkout"
