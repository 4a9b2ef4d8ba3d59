#!/usr/bin/env bash
# Device check: everything EchoForge measures on one GPU, in one call of under 8 minutes.
#
# Steps (each under its own `timeout`; a failing step does not stop the others):
#   1. tests     CUDA tests of the CSM engine (tests/csm/test_cuda.py): compiled == eager codes in
#                exact fp32, CUDA == CPU, bf16 agreement above a floor
#   2. speed     benchmarks/csm_speed.py at full csm-1b size: ours compiled, ours eager, transformers;
#                batch 1 and 8: frames/s, RTF, time to first audio, peak GiB
#   3. drift     benchmarks/precision_drift.py at full size: bf16 / fp16 / tf32 vs exact fp32
#   4. concurrency  benchmarks/concurrency.py --device cuda --sizes full (if that file exists)
# Results land in $OUT (the device tool brings back what is there): summary.txt, results.md (the
# benchmark tables, ready to append to BENCHMARKS.md), results.jsonl (their JSON lines) and one
# log per step: 7 files, within the tool's 8.
#
# With the device tool (this repo's root; build the wheels here first, once per checkout):
#   bash benchmarks/device_check.sh --fetch-wheels      # here: pure-Python deps the device lacks -> .whl/
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)
# then append $OUT/results.md (files_at/results.md) to BENCHMARKS.md and give the machine back.
# The device's python3 has torch 2.11+CUDA, transformers 5.17, numpy, safetensors, tokenizers,
# pyyaml, typer, rich, pytest; .whl carries pydantic(-core, -settings), annotated-types,
# typing-inspection, typing-extensions, python-dotenv and num2words (echoforge imports them at
# module level). Nothing is installed into the device's own environment (pip --target /tmp/site).
#
# Dry run on CPU (CI runs it through tests/bench/test_device_check.py with --quick):
#   bash benchmarks/device_check.sh --device cpu --sizes tiny [--quick] [--out DIR]
#
# Options: --device cuda|cpu (default cuda)  --sizes tiny|mid|full (default full)
#          --out DIR (default $OUT, else ./device_check_out)  --python PY (default python3, or
#          .venv/bin/python for --device cpu when it exists)  --quick (few frames: CI)
#          --budget SECONDS (whole run; default 470 on a GPU, 1200 on CPU)  --only tests,speed,drift,concurrency
# Step time limits (seconds): T_TESTS T_SPEED T_DRIFT T_CONCURRENCY in the environment override
# the defaults (GPU: 60 230 90 90; CPU, slow and often shared: 300 each).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD

DEVICE=cuda SIZES=full OUTDIR=${OUT:-} PY="" QUICK=0 BUDGET="" ONLY="tests,speed,drift,concurrency"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --fetch-wheels)
      # Pure-Python wheels (+ pydantic-core for CPython 3.12 x86-64) at the versions of this venv.
      PIP=${PY:-.venv/bin/python}
      ver() { "$PIP" -c "import importlib.metadata as m; print(m.version('$1'))"; }
      pkgs=""
      for p in pydantic pydantic-core pydantic-settings annotated-types typing-inspection typing-extensions python-dotenv num2words; do
        pkgs="$pkgs $p==$(ver "$p")"
      done
      rm -rf .whl && mkdir -p .whl
      # shellcheck disable=SC2086
      "$PIP" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pkgs || exit 1
      ls .whl && du -sh .whl
      exit 0 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$PY" ]; then
  if [ "$DEVICE" = cpu ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUTDIR=${OUTDIR:-$REPO/device_check_out}
if [ "$DEVICE" = cpu ]; then d=300; BUDGET=${BUDGET:-1200}; else d=""; BUDGET=${BUDGET:-470}; fi
T_TESTS=${T_TESTS:-${d:-60}} T_SPEED=${T_SPEED:-${d:-230}} T_DRIFT=${T_DRIFT:-${d:-90}} T_CONCURRENCY=${T_CONCURRENCY:-${d:-90}}
mkdir -p "$OUTDIR"
: >"$OUTDIR/results.md"; : >"$OUTDIR/results.jsonl"
SUMMARY=$OUTDIR/summary.txt
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Carried wheels -> /tmp/site (never into the device's own environment).
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "$DEVICE" != cpu ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH} || echo "wheel install failed" >&2
fi
export PYTHONPATH=${PYTHONPATH:-$REPO}
case ":$PYTHONPATH:" in *":$REPO:"*) ;; *) export PYTHONPATH=$PYTHONPATH:$REPO ;; esac

{
  echo "# device check $(date -u '+%Y-%m-%d %H:%M UTC') --device $DEVICE --sizes $SIZES$([ $QUICK = 1 ] && echo ' --quick')"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' +uncommitted')"
  "$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>&1
  "$PY" -c "import echoforge.csm.generator, echoforge.config; print('echoforge importable')" 2>&1 | tail -1
} >"$SUMMARY"
cat "$SUMMARY"

STATUS=()
echo "## steps as they finish (each step's table is in results.md, its JSON line in results.jsonl, when it ends)" >>"$SUMMARY"
# step NAME SECONDS CMD...: run under timeout (capped by what is left of the budget), log to $OUTDIR/NAME.log.
step() {
  local name=$1 limit=$2; shift 2
  case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    STATUS+=("$name: SKIPPED (budget spent)"); echo "== $name: skipped, budget spent"; return 0
  fi
  echo "== $name (timeout ${limit}s): $*"
  local t0 rc; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1; rc=$?
  local dt=$(($(date +%s) - t0)) verdict=ok
  [ $rc -ne 0 ] && verdict="FAILED (rc $rc)"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMEOUT after ${limit}s"
  grep -h '^{"benchmark"' "$OUTDIR/$name.log" >>"$OUTDIR/results.jsonl"
  STATUS+=("$name: $verdict in ${dt}s")
  echo "- $name: $verdict in ${dt}s" >>"$SUMMARY"  # at once: a run killed later still has this step's line
  echo "   $verdict in ${dt}s; last lines:"; tail -n 4 "$OUTDIR/$name.log" | cut -c1-300 | sed 's/^/   | /'
}

if [ $QUICK = 1 ]; then
  FRAMES=6 FULL_FRAMES=6 DRIFT_FRAMES=16 REPEATS=1 BATCHES=1,8
else
  FRAMES=24 FULL_FRAMES=64 DRIFT_FRAMES=200 REPEATS=2 BATCHES=1,8
fi
TEST_ENV=()
[ "$DEVICE" = cpu ] && TEST_ENV=(env ECHOFORGE_TEST_DEVICE=cpu)

step tests "$T_TESTS" "${TEST_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider tests/csm/test_cuda.py
step speed "$T_SPEED" "$PY" benchmarks/csm_speed.py --device "$DEVICE" --sizes "$SIZES" --frames $FRAMES \
  --full-frames $FULL_FRAMES --batches $BATCHES --repeats $REPEATS --markdown "$OUTDIR/results.md"
step drift "$T_DRIFT" "$PY" benchmarks/precision_drift.py --device "$DEVICE" --sizes "$SIZES" --frames $DRIFT_FRAMES \
  --markdown "$OUTDIR/results.md"
if [ -f benchmarks/concurrency.py ]; then
  step concurrency "$T_CONCURRENCY" "$PY" benchmarks/concurrency.py --device "$DEVICE" --sizes "$SIZES" --streams "$([ $QUICK = 1 ] && echo 1,4 || echo 1,4,8,16,32)" --frames $FRAMES --full-frames "$([ $QUICK = 1 ] && echo 6 || echo 32)" --budget $((T_CONCURRENCY > 40 ? T_CONCURRENCY - 25 : 15)) --markdown "$OUTDIR/results.md"
else
  STATUS+=("concurrency: SKIPPED (benchmarks/concurrency.py not there yet)")
fi

{
  echo
  echo "## steps ($(($(date +%s) - START)) s in all, budget ${BUDGET} s)"
  for s in "${STATUS[@]}"; do echo "- $s"; done
} | tee -a "$SUMMARY"
echo; echo "## results.md"; cat "$OUTDIR/results.md"
# Exit status: 0 when every step that ran passed (the device tool reports it as rc).
! grep -q "FAILED\|TIMEOUT" "$SUMMARY"
