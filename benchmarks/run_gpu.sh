#!/usr/bin/env bash
# Everything the fused kernel needs checked on a GPU, in one run of under 8 minutes:
#   1. the GPU tests (pytest -m gpu) and tests/test_triton_kernel.py compiled (no TRITON_INTERPRET);
#   2. the acceptance check at N = 16384, D = 128, float32 (and whether N = 262144 runs);
#   3. bench_loss.py on CUDA, float32, D = 128, N = 512 .. 262144;
#   4. if time is left, a smaller grid at D = 64 and 256.
# Installs nothing from the network. Optional wheels (inf-cl, pytorch-metric-learning, lightly,
# info-nce-pytorch) may be carried in ./.whl; they are installed with --no-index --no-deps into
# /tmp/site. Every step has a timeout and the whole run a budget (GPU_BUDGET_S, default 450 s);
# results are written as they come, so a step cut short still leaves its partial output.
#
# Usage (from the repository root):  bash benchmarks/run_gpu.sh [OUT_DIR]
# OUT_DIR defaults to $OUT, else ./gpu_results.
set -u

OUT_DIR="${1:-${OUT:-./gpu_results}}"
mkdir -p "$OUT_DIR"
BUDGET_S="${GPU_BUDGET_S:-450}"
START_S=$(date +%s)
LOG="$OUT_DIR/run_gpu.log"

left() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }
say() { echo "[run_gpu $(( $(date +%s) - START_S ))s] $*" | tee -a "$LOG"; }
# run_step NAME MAX_SECONDS CMD...: runs CMD under min(MAX_SECONDS, budget left - reserve).
run_step() {
    local name="$1" max_s="$2"; shift 2
    local budget=$(( $(left) - 15 ))
    (( budget > max_s )) && budget=$max_s
    if (( budget < 20 )); then
        say "skip $name: budget spent"
        return 0
    fi
    say "start $name (timeout ${budget}s)"
    timeout --signal=INT --kill-after=10 "$budget" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    say "end $name: rc=$rc$( ((rc == 124)) && echo ' (timed out)')"
    tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$LOG"
}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    if python -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl >"$OUT_DIR/pip.log" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        say "wheel install failed (see pip.log); the missing baselines are skipped"
    fi
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    python - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as err:
    print("triton unavailable:", err)
for name in ("inf_cl", "pytorch_metric_learning", "lightly", "info_nce"):
    try:
        __import__(name); print(name, "importable")
    except Exception as err:
        print(name, "not importable:", type(err).__name__, err)
EOF
} >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt" | tee -a "$LOG"

# 1. Tests. The gpu-marked tests of the whole suite, then this kernel's test file on CUDA tensors.
run_step tests_gpu 120 python -m pytest -m gpu tests -q -p no:cacheprovider --junitxml="$OUT_DIR/tests_gpu.xml"
run_step tests_triton_kernel 100 python -m pytest tests/test_triton_kernel.py -m "not gpu" -q -p no:cacheprovider \
    --junitxml="$OUT_DIR/tests_triton_kernel.xml"

# 2. Acceptance check (prints and writes acceptance.json / acceptance.md).
run_step acceptance 100 python benchmarks/bench_loss.py --device cuda --acceptance --out "$OUT_DIR"

# 3. The main sweep: D = 128, N up to 262144.
MAIN_S=$(( $(left) - 70 ))
(( MAIN_S > 220 )) && MAIN_S=220
run_step bench_d128 $(( MAIN_S + 20 )) python benchmarks/bench_loss.py --device cuda --dims 128 --repeats 3 \
    --budget-s "$MAIN_S" --out "$OUT_DIR/bench_d128"

# 4. Whatever time is left: D = 64 and 256 up to N = 65536.
SIDE_S=$(( $(left) - 25 ))
if (( SIDE_S > 30 )); then
    run_step bench_d64_256 $(( SIDE_S + 15 )) python benchmarks/bench_loss.py --device cuda --dims 64,256 --repeats 3 \
        --sizes 512,2048,8192,32768,65536 --budget-s "$SIDE_S" --out "$OUT_DIR/bench_d64_256"
else
    say "skip bench_d64_256: budget spent"
fi

{
    echo "# GPU run of benchmarks/run_gpu.sh"
    echo
    echo '```'
    cat "$OUT_DIR/env.txt"
    echo '```'
    echo
    for f in "$OUT_DIR/acceptance.md" "$OUT_DIR/bench_d128/bench_loss.md" "$OUT_DIR/bench_d64_256/bench_loss.md"; do
        [ -f "$f" ] && { cat "$f"; echo; }
    done
    echo "## Step log"
    echo '```'
    cat "$LOG"
    echo '```'
} >"$OUT_DIR/SUMMARY.md"
say "done in $(( $(date +%s) - START_S )) s; summary in $OUT_DIR/SUMMARY.md"
