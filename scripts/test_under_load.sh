#!/usr/bin/env bash
# The suite on a busy machine: N CPU-burning processes (default 2, one per core of the CI box)
# run beside `pytest` for the whole run, RUNS times in a row (default 3); stops at the first
# failure. Each run's wall time and result go to stdout and to tests/artifacts/under-load.log.
#   scripts/test_under_load.sh                # 3 runs, 2 hogs
#   HOGS=4 RUNS=1 scripts/test_under_load.sh -m "not integration"
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOGS=${HOGS:-2}
RUNS=${RUNS:-3}
LOG=tests/artifacts/under-load.log
mkdir -p "$(dirname "$LOG")"

hogs=()
start_hogs() { for _ in $(seq "$HOGS"); do "$PY" -c 'while True: pass' & hogs+=($!); done; }
stop_hogs() { for pid in "${hogs[@]:-}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; hogs=(); }
trap stop_hogs EXIT INT TERM

for run in $(seq "$RUNS"); do
  start_hogs
  t0=$(date +%s)
  "$PY" -m pytest -q -p no:cacheprovider --timeout=900 "$@"
  rc=$?
  t1=$(date +%s)
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  stop_hogs
  line="$(date -u +%FT%TZ) run $run/$RUNS: rc=$rc in $((t1 - t0)) s, $HOGS hogs, load $load, $(nproc) cores"
  echo "$line" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || exit "$rc"
done
echo "under load: $RUNS of $RUNS runs passed"
