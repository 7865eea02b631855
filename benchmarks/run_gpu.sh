#!/usr/bin/env bash
# A GPU run that fits 8 minutes with margin (budget GPU_BUDGET_S, default 420 s), most important
# numbers first. Each step has a timeout and writes JSON after every point, so a run cut short
# still leaves everything measured before the cut:
#   1. correctness against float64 (gpu_check.py): each dtype (float32 as 3xTF32, TF32 and IEEE;
#      bfloat16; float16) with the hard and the soft mask, attract, default tiles; one process
#      per dtype, so the kernels compile in parallel (~1 min);
#   2. N = 16384, D = 128 (kernel_times.py): forward, dQ and dK timed separately with
#      triton.testing.do_bench, forward+backward and peak memory, per dtype, keep and the
#      labelled variant; the reference backend and inf-cl on the same views;
#   3. N = 262144, D = 128: the fused loss in bfloat16 and float32, the reference (expected out
#      of memory: it keeps N×N) and inf-cl;
#   4. the GPU tests (pytest -m gpu tests/test_triton_kernel.py): accuracy at scale per dtype,
#      odd widths 65 and 300, memory linear in N;
#   5. check_machinery.py: no host syncs, autocast, torch.compile graph breaks, per backend;
#   6. the sweep (bench_loss.py, N on the outer loop) with the time left.
# Installs nothing from the network: wheels carried in ./.whl (inf-cl) are installed with
# --no-index --no-deps into /tmp/site; a missing one is skipped, not failed.
#
# Usage (from the repository root):  bash benchmarks/run_gpu.sh [OUT_DIR]     (default $OUT, else ./gpu_results)
# DRY_RUN=1 runs the same steps on CPU in Triton's interpreter at tiny sizes (tests/test_triton_gpu_script.py).
set -u

OUT_DIR="${1:-${OUT:-./gpu_results}}"
mkdir -p "$OUT_DIR"
DRY="${DRY_RUN:-0}"
BUDGET_S="${GPU_BUDGET_S:-420}"
START_S=$(date +%s)
LOG="$OUT_DIR/run_gpu.log"
PY="${PYTHON:-python3}"

left() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }
say() { echo "[run_gpu $(( $(date +%s) - START_S ))s] $*" | tee -a "$LOG"; }
# run_step NAME MAX_SECONDS CMD...: runs CMD under min(MAX_SECONDS, budget left - 10 s).
run_step() {
    local name="$1" max_s="$2"; shift 2
    local budget=$(( $(left) - 10 ))
    (( budget > max_s )) && budget=$max_s
    if (( budget < 15 )); then
        say "skip $name: budget spent"
        return 0
    fi
    say "start $name (timeout ${budget}s)"
    timeout --signal=INT --kill-after=10 "$budget" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    say "end $name: rc=$rc$( ((rc == 124)) && echo ' (timed out)')"
    tail -n 12 "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$LOG"
}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset ADAPTIVE_CONTRASTIVE_FP32_PRECISION
if [ "$DRY" = "1" ]; then
    DEV=(--device cpu --interpret)
    CHECK=(--n 32 --d 16 --dtypes float32,float16)
    MAIN=(--n 32 --d 16 --variants float32-attract-hard,float16-attract-labels --baselines reference-float32)
    BIG=(--n 48 --d 16 --variants float16-attract-hard --baselines "")
    TESTS=(--collect-only)
    SWEEP=(--sizes 32 --dims 16 --methods triton_attract,reference_attract --repeats 1 --interpret-max-n 32)
else
    unset TRITON_INTERPRET
    DEV=(--device cuda)
    CHECK=(--n 4096 --d 128)
    MAIN=(--n 16384 --d 128)
    BIG=(--n 262144 --d 128 --variants bfloat16-attract-hard,float32-attract-hard
         --baselines reference-float32,inf_cl-bfloat16)
    TESTS=()
    SWEEP=(--dims 128 --repeats 3 --methods triton_attract,triton_keep,triton_attract_labels,reference_attract,inf_cl)
fi

if [ "$DRY" != "1" ] && compgen -G ".whl/*.whl" >/dev/null; then
    say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >"$OUT_DIR/pip.log" 2>&1
    then
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        say "wheel install failed (see pip.log); inf-cl is skipped"
    fi
fi

{
    [ "$DRY" = "1" ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as err:
    print("triton unavailable:", err)
try:
    import inf_cl; print("inf_cl importable")
except Exception as err:
    print("inf_cl not importable:", type(err).__name__, err)
EOF
} >"$OUT_DIR/env.txt" 2>&1
tee -a "$LOG" <"$OUT_DIR/env.txt"

# 1. Correctness against float64, every dtype, both masks.
run_step check 110 "$PY" benchmarks/gpu_check.py "${DEV[@]}" "${CHECK[@]}" --out "$OUT_DIR/check"
# 2. The headline size, kernel by kernel.
run_step n16384 120 "$PY" benchmarks/kernel_times.py "${DEV[@]}" "${MAIN[@]}" --out "$OUT_DIR/n16384"
# 3. A quarter of a million rows.
run_step n262144 60 "$PY" benchmarks/kernel_times.py "${DEV[@]}" "${BIG[@]}" --out "$OUT_DIR/n262144"
# 4. The GPU tests.
run_step tests_gpu 80 "$PY" -m pytest -m gpu tests/test_triton_kernel.py -q -p no:cacheprovider "${TESTS[@]}" \
    --junitxml="$OUT_DIR/tests_gpu.xml"
# 5. Syncs, autocast and torch.compile, every backend.
MACHINERY_DEVICE=cuda
[ "$DRY" = "1" ] && MACHINERY_DEVICE=cpu
run_step machinery 50 env -u TRITON_INTERPRET "$PY" benchmarks/check_machinery.py --device "$MACHINERY_DEVICE" \
    --out "$OUT_DIR/machinery.json"
# 6. The sweep with what is left, N on the outer loop.
SWEEP_S=$(( $(left) - 25 ))
if (( SWEEP_S > 20 )); then
    run_step sweep $(( SWEEP_S + 15 )) "$PY" benchmarks/bench_loss.py "${DEV[@]}" "${SWEEP[@]}" \
        --budget-s "$SWEEP_S" --out "$OUT_DIR/sweep"
else
    say "skip sweep: budget spent"
fi

{
    echo "# GPU run of benchmarks/run_gpu.sh"
    echo
    echo '```'
    cat "$OUT_DIR/env.txt"
    echo '```'
    echo
    for f in "$OUT_DIR/check/check.md" "$OUT_DIR/n16384/kernel_times.md" "$OUT_DIR/n262144/kernel_times.md" \
        "$OUT_DIR/sweep/bench_loss.md"; do
        [ -f "$f" ] && { cat "$f"; echo; }
    done
    echo "## Step log"
    echo '```'
    cat "$LOG"
    echo '```'
} >"$OUT_DIR/SUMMARY.md"
say "done in $(( $(date +%s) - START_S )) s; summary in $OUT_DIR/SUMMARY.md"
