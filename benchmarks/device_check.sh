#!/usr/bin/env bash
# Device check: every figure the first GPU run needs, in one call of under 10 minutes on an H100.
#
# Steps, in this order (each under its own `timeout`; a failing step does not stop the others;
# each appends its tables to results.md and its JSON lines to results.jsonl, and its status line
# to summary.txt, the moment it has them: a run killed by the device tool keeps what finished):
#   1. serving   benchmarks/csm_serving_check.py at full csm-1b size, bf16, built directly on the
#                device, one process whose compiled frame step every section shares; its sections
#                write as they end: build s; compile + capture s of bucket 1; aten ops per frame and
#                which attention kernel ran (profiler names of the SDPA op and its kernels, eager and
#                compiled); ours vs transformers at batch 1 (fps, RTF, TTFA); TTFA with a cloned
#                10-s voice, prefix cache hit vs miss, batch 1; compile + capture s of buckets 8, 16,
#                32, 64 one by one, each only if the previous one's measured time still fits before
#                55 % of the step's budget (a bucket that does not fit runs eager and says so);
#                how many of 1 / 8 / 32 / 64 streams stay real time (every stream's RTF < 1, max and
#                p50, TTFA p50 / p95); TTFA with the cloned voice at batch 16, cached vs uncached; Mimi
#                decode of one 8-frame chunk for 1 / 8 / 32 streams in one call, eager, then compiled +
#                CUDA-graphed per rows bucket while the budget lasts (ms per chunk, compile s, and the
#                compiled audio's largest difference from the eager one).
#   2. drift     benchmarks/precision_drift.py at full size (built on the device): bf16 / fp16 /
#                tf32 vs exact fp32, teacher-forced agreement and first divergence
#   3. tests     CUDA tests of the CSM engine (tests/csm/test_cuda.py): compiled == eager codes in
#                exact fp32, CUDA == CPU, bf16 agreement above a floor
#   (speed, concurrency: the older csm_speed.py / concurrency.py steps, with --only)
#   (mimi: the serving check's Mimi section alone, codec only (csm_serving_check.py --mimi-only), then
#    the CUDA test of tests/csm/test_mimi_batch.py (compiled == eager in exact fp32, no compile after
#    warm-up, no CUDA graph skipped); with --only ...,mimi: every compile gets its time when the serving
#    step's budget ran out before them. H100 never measured: ~10 imports + ~5 build + 3 x (compile +
#    capture, guessed 20-40 s) + ms of decoding, + the test (~10 imports, one tiny compile)
#
# Time (s). CPU dry run (`--device cpu --sizes tiny --quick`, 2 shared cores, load ~3, 2026-12-06):
# serving 15 (build 2, bucket-1 warm-up 0.1, kernels 1, vs transformers 1, TTFA b1 0.3, buckets
# 8..64 0.6, streams 1/8/32/64 x 6 frames 6, TTFA b16 1), drift 6, tests 11: 38 s in all; with the
# Mimi section (1/8/32 rows x 6 eager calls, ~1 s) at load 3.5, 21:42 UTC: serving 18, drift 9,
# tests 11: 43 s. `--only mimi`: 11 s (codec build, 1/8/32 eager, the CUDA test skipped).
# H100, full size, extrapolated (never measured; the step measures and reports each figure):
#   serving  ~10 imports + ~15 build (random init in fp32 and the bf16 cast, on the device, ~12 GiB
#            peak) + compile: the static step is three graphs (codebooks 0-1, one depth-decoder
#            step replayed 30x, the backbone step): 1,536 aten ops compiled per bucket instead of 9,256
#            (CPU inductor, tiny: 27 s instead of 297 s for bucket 1), so ~15-40 s per bucket on the H100's
#            16 cores; buckets 8/16/32/64 are compiled while the measured time fits before 55 % of the
#            step's budget (~185 s), the rest run eager and are labelled so + kernels ~25 (one eager
#            frame ~0.1, FlexAttention compiled alone ~20) + vs transformers ~15 (24 frames each;
#            transformers ~0.2 s/frame) + TTFA b1 ~3 + streams 1/8/32/64 x 48 frames ~30 (~10-20
#            ms/frame at any batch: ~9 GB of bf16 weights read per frame) + TTFA b16 ~5: ~200-330
#            of its 370;
#   drift    ~60 (fp32 built on the device; 4 dtypes x 200 greedy frames, eager);
#   tests    ~45 (three tiny compiles). Defaults: T_SERVING 370, T_DRIFT 90, T_TESTS 75 (sum 535),
#            --budget 560 for the run: under 10 min with the device tool's start.
#
# Results land in $OUT (the device tool brings back what is there): summary.txt, results.md (the
# benchmark tables, ready to append to BENCHMARKS.md), results.jsonl (their JSON lines) and one
# log per step: 6 files (8 with --only ...,speed,concurrency), within the tool's 8.
#
# With the device tool (this repo's root; build the wheels here first, once per checkout):
#   bash benchmarks/device_check.sh --fetch-wheels      # here: pure-Python deps the device lacks -> .whl/
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=600)
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
#          --budget SECONDS (whole run; default 560 on a GPU, 1200 on CPU)
#          --only serving,drift,tests,speed,concurrency,mimi (default serving,drift,tests)
# Step time limits (seconds): T_SERVING T_DRIFT T_TESTS T_SPEED T_CONCURRENCY T_MIMI in the environment
# override the defaults (GPU: 370 90 75 230 90 150; CPU, slow and often shared: 300 each).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD

DEVICE=cuda SIZES=full OUTDIR=${OUT:-} PY="" QUICK=0 BUDGET="" ONLY="serving,drift,tests"
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
    -h|--help) sed -n '2,69p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$PY" ]; then
  if [ "$DEVICE" = cpu ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUTDIR=${OUTDIR:-$REPO/device_check_out}
if [ "$DEVICE" = cpu ]; then d=300; BUDGET=${BUDGET:-1200}; else d=""; BUDGET=${BUDGET:-560}; fi
T_SERVING=${T_SERVING:-${d:-370}} T_TESTS=${T_TESTS:-${d:-75}} T_SPEED=${T_SPEED:-${d:-230}} T_DRIFT=${T_DRIFT:-${d:-90}}
T_CONCURRENCY=${T_CONCURRENCY:-${d:-90}} T_MIMI=${T_MIMI:-${d:-150}}
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
  FRAMES=6 FULL_FRAMES=6 DRIFT_FRAMES=16 REPEATS=1 BATCHES=1,8 SERVE_FRAMES=6 HF_FRAMES=6
else
  FRAMES=24 FULL_FRAMES=64 DRIFT_FRAMES=200 REPEATS=2 BATCHES=1,8 SERVE_FRAMES=48 HF_FRAMES=24
fi
TEST_ENV=()
[ "$DEVICE" = cpu ] && TEST_ENV=(env ECHOFORGE_TEST_DEVICE=cpu)
SERVE_SIZE=${SIZES##*,}  # one size: the largest asked for

# serving writes its tables and JSON lines itself, section by section (--markdown / --jsonl);
# its budget leaves 30 s of its step's limit for the last section to finish.
step serving "$T_SERVING" "$PY" benchmarks/csm_serving_check.py --device "$DEVICE" --size "$SERVE_SIZE" \
  --streams 1,8,32,64 --frames $SERVE_FRAMES --hf-frames $HF_FRAMES --ttfa-batch 16 --repeats $((REPEATS + 1)) \
  --budget $((T_SERVING > 60 ? T_SERVING - 30 : T_SERVING)) --markdown "$OUTDIR/results.md" --jsonl "$OUTDIR/results.jsonl"
step drift "$T_DRIFT" "$PY" benchmarks/precision_drift.py --device "$DEVICE" --sizes "$SIZES" --frames $DRIFT_FRAMES \
  --markdown "$OUTDIR/results.md"
step tests "$T_TESTS" "${TEST_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider tests/csm/test_cuda.py
step speed "$T_SPEED" "$PY" benchmarks/csm_speed.py --device "$DEVICE" --sizes "$SIZES" --frames $FRAMES \
  --full-frames $FULL_FRAMES --batches $BATCHES --repeats $REPEATS --markdown "$OUTDIR/results.md"
step concurrency "$T_CONCURRENCY" "$PY" benchmarks/concurrency.py --device "$DEVICE" --sizes "$SIZES" --streams "$([ $QUICK = 1 ] && echo 1,4 || echo 1,4,8,16,32)" --frames $FRAMES --full-frames "$([ $QUICK = 1 ] && echo 6 || echo 32)" --budget $((T_CONCURRENCY > 40 ? T_CONCURRENCY - 25 : 15)) --markdown "$OUTDIR/results.md"
step mimi "$T_MIMI" bash -c "\"\$0\" benchmarks/csm_serving_check.py --mimi-only --device $DEVICE --size $SERVE_SIZE \
  --mimi-rows 1,8,32 --mimi-reps $((REPEATS * 3)) --budget $((T_MIMI > 60 ? T_MIMI - 40 : T_MIMI)) \
  --markdown $OUTDIR/results.md --jsonl $OUTDIR/results.jsonl && \"\$0\" -m pytest -q -p no:cacheprovider \
  tests/csm/test_mimi_batch.py -m gpu" "$PY"

{
  echo
  echo "## steps ($(($(date +%s) - START)) s in all, budget ${BUDGET} s)"
  for s in "${STATUS[@]}"; do echo "- $s"; done
} | tee -a "$SUMMARY"
echo; echo "## results.md"; cat "$OUTDIR/results.md"
# Exit status: 0 when every step that ran passed (the device tool reports it as rc).
! grep -q "FAILED\|TIMEOUT" "$SUMMARY"
