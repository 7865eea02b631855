#!/usr/bin/env bash
# The converged Beauty comparison on one GPU, in one call of at most 8 minutes (from the repository root):
#
#     OUT=/path/to/out bash examples/duorec/results/beauty/run_gpu.sh
#
# Five train.py processes share the GPU at once: SASRec; DuoRec and AdaptiveRec with the same cosine similarity
# at tau = 0.2 (as in reproduce_like.sh); DuoRec with its same-target pairs known; and the AdaptiveRec authors'
# recipe (--recipe authors: their g, batch 1024, cosine lr, tau = 1). Each stops on its own early stopping
# (patience 10 on validation NDCG@10) or when --time-budget runs out, evaluates its best checkpoint and writes
# $OUT/<name>/results.json (log: $OUT/<name>.log); then the paired bootstraps over test users against DuoRec
# ($OUT/gaps/) and the table ($OUT/table.md) are printed. Runs keep no last.pt and a model-only best.pt
# (--no-checkpoints): the authors' g alone is 2 GB, and writing it with its Adam state every epoch would cost
# more time than the epoch.
#
# Environment: OUT (required), BEAUTY (the data file; default ../shared/data/beauty/Beauty.txt, else
# shared/data/beauty/Beauty.txt), BUDGET (seconds per run, start-up and data loading included; default 360,
# which leaves about 2 minutes of the 8 for the final evaluations, the bootstraps and the table), DEVICE (default cuda),
# THREADS (CPU threads per run; default 3), DATA_ARGS (replaces the dataset flags, e.g. for a smoke test on
# --dataset synthetic), EXTRA (flags appended to every run, e.g. --max-steps 2 --epochs 2 --batch-size 32).
set -euo pipefail
OUT=${OUT:?set OUT to the output folder}
BUDGET=${BUDGET:-360}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-3}
if [ -z "${DATA_ARGS:-}" ]; then
  DATA=${BEAUTY:-}
  for candidate in ../shared/data/beauty/Beauty.txt shared/data/beauty/Beauty.txt; do
    [ -z "$DATA" ] && [ -f "$candidate" ] && DATA=$candidate
  done
  [ -n "$DATA" ] || { echo "run_gpu.sh: Beauty.txt not found; set BEAUTY" >&2; exit 2; }
  DATA_ARGS="--dataset beauty --data-path $DATA"
fi
mkdir -p "$OUT"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)

# shellcheck disable=SC2086  # DATA_ARGS and EXTRA are word lists
run() {
  local name=$1; shift
  python examples/duorec/train.py $DATA_ARGS --device "$DEVICE" --threads "$THREADS" --quiet --no-plots \
    --no-checkpoints --time-budget "$BUDGET" --out "$OUT/$name" "$@" ${EXTRA:-} > "$OUT/$name.log" 2>&1
}
C="--contrast us_x --similarity cos --temperature 0.2 --epochs 300 --patience 10"
pids=()
run sasrec                --loss none --epochs 300 --patience 10            & pids+=($!)
run duorec-cos            --loss duorec   $C                                & pids+=($!)
run adaptive              --loss adaptive $C                                & pids+=($!)
run duorec-same-target    --loss duorec   $C --known-positives same-target  & pids+=($!)
run authors               --recipe authors                                  & pids+=($!)
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "all runs ended after $(( $(date +%s) - start )) s; $failed failed"
for log in "$OUT"/*.log; do echo "== $log"; tail -n 4 "$log"; done
# Paired bootstraps over test users (a vs b), the four at once.
gap() {
  python examples/duorec/compare.py "$OUT/$1" "$OUT/$2" --device "$DEVICE" --json "$OUT/gaps/$1-vs-$2.json" \
    > "$OUT/gaps/$1-vs-$2.txt" 2>&1
}
if [ "$failed" = 0 ]; then
  mkdir -p "$OUT/gaps"
  pairs=("adaptive duorec-cos" "duorec-same-target duorec-cos" "authors duorec-cos" "duorec-cos sasrec")
  pids=()
  for pair in "${pairs[@]}"; do set -- $pair; gap "$1" "$2" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  for pair in "${pairs[@]}"; do set -- $pair; echo "== $1 vs $2"; cat "$OUT/gaps/$1-vs-$2.txt"; done
fi
python examples/duorec/summarize.py "$OUT" --metrics NDCG@10 MRR@10 Recall@10 NDCG@20 | tee "$OUT/table.md"
python - "$OUT" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/results.json")):
    r = json.loads(path.read_text())
    print(f"{path.parent.name:20s} status={r.get('status')} epochs={r['epochs_done']} best={r['best_epoch']} "
          f"s/epoch={r.get('epoch_time_s')} test NDCG@10={r.get('test', {}).get('NDCG@10')}")
PY
echo "total $(( $(date +%s) - start )) s"
exit "$failed"
