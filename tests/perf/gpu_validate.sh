#!/usr/bin/env bash
# Validates a GPU machine in one command, with no network, and leaves everything in one folder:
#   1. bench check on every device (each device x pipeline x mode x step variant, 2 ranks where it can);
#   2. the default sweep on cpu and cuda with the CUDA-graph variant (synthetic data: no download);
#   3. the truth check on CUDA: the harness's training figure against an independent minimal loop
#      (tests/perf/harness_vs_minimal.py --device cuda:0), which should agree within 3%.
# Every step runs even when an earlier one failed; the exit status is 1 when any failed.
#
#   tests/perf/gpu_validate.sh [OUT_DIR]          (default reports/gpu-validate-<date-time>)
#
# Settings (environment): BENCH_CHECK_ARGS, options for bench check (e.g. "--devices cuda:1"); BENCH_SWEEP_ARGS,
# extra options for the sweep (later options win, e.g. "--devices cuda") (e.g. "--max-seconds 4" to fit a
# time-limited machine); TRUTH_ARGS, options for the truth check (default: up to 6 ABBA rounds of 1000 steps at
# batch 4, 32 and 128, in the default allocator state only: both states would double it); PYTHON (default python). Then commit the sweep as a sample, e.g.
#   cp -r OUT_DIR/sweep reports/sample-gpu-h100 && python -m bench report reports/sample-gpu-h100
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-reports/gpu-validate-$(date +%Y%m%d-%H%M%S)}
python=${PYTHON:-python}
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
status=0

step() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$summary"
    local started=$SECONDS
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "   ok in $((SECONDS - started)) s (log: $name.log)" | tee -a "$summary"
    else
        echo "   FAILED with exit status $rc in $((SECONDS - started)) s: $(tail -n 1 "$out/$name.log")" | tee -a "$summary"
        status=1
    fi
}

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not found or failed" > "$out/nvidia-smi.txt"
step env "$python" -m bench env
# shellcheck disable=SC2086  # BENCH_CHECK_ARGS is a list of options
step check "$python" -m bench check ${BENCH_CHECK_ARGS:-}
# shellcheck disable=SC2086
step sweep "$python" -m bench run --devices cpu,cuda --cuda-graphs --dataset synthetic --out "$out/sweep" \
    ${BENCH_SWEEP_ARGS:-}
# shellcheck disable=SC2086
step truth "$python" tests/perf/harness_vs_minimal.py --device cuda:0 --json "$out/truth.json" \
    ${TRUTH_ARGS:---steps 1000 --rounds 6 --min-rounds 4 --batch-sizes 4,32,128 --mallocs default}
if [ -f "$out/sweep/report.md" ]; then
    { echo; echo "== verdict (sweep/report.md)"; sed -n '1,12p' "$out/sweep/report.md"; } | tee -a "$summary"
fi
if grep -q "agrees within\|DISAGREES" "$out/truth.log" 2>/dev/null; then
    { echo; echo "== truth check (truth.log)"; grep "agrees within\|DISAGREES" "$out/truth.log"; } | tee -a "$summary"
fi
echo "gpu_validate: $([ $status -eq 0 ] && echo "every step passed" || echo "a step FAILED"); everything is in $out" \
    | tee -a "$summary"
exit $status
