#!/usr/bin/env bash
# The CL4SRec runs of examples/duorec/README.md ("CL4SRec on Amazon Beauty"), from the repository root:
#
#     bash examples/duorec/results/beauty/reproduce_cl4srec.sh [SEEDS...]      # default: seeds 0 and 1
#
# CL4SRec's views (two augmentations of each sequence: item crop 0.6, mask 0.3, reorder 0.6, two different
# operators per sequence) with plain InfoNCE (--loss duorec) and with AdaptiveInfoNCE (--loss adaptive), at
# the same similarity (cosine) and temperature (tau = 0.2: at tau = 1 the cosine InfoNCE is nearly flat over
# the 510 in-batch candidates, see the README, so whether negatives are kept or handled would barely matter).
# Everything else is the main comparison's (lr 1e-3, batch 256, lambda 0.1, 10 epochs).
#
# Each command passes --resume, so rerunning the script after an interrupt continues every run from its
# last finished epoch (a finished run is only re-evaluated). Runs go to runs/beauty/<name>-<seed>; the
# last steps copy their results.json and similarity plots (no checkpoints) next to this script, compare
# the two losses seed by seed (paired bootstrap over test users) and print the table.
set -euo pipefail
DATA=${BEAUTY:-../shared/data/beauty/Beauty.txt}
HERE=examples/duorec/results/beauty
SEEDS=${*:-0 1}
train() { python examples/duorec/train.py --dataset beauty --data-path "$DATA" --resume --quiet "$@"; }
C="--contrast cl4srec --similarity cos --temperature 0.2 --epochs 10"

for s in $SEEDS; do
  train --loss duorec   $C --seed "$s" --out "runs/beauty/cl4srec-duorec-$s"
  train --loss adaptive $C --seed "$s" --out "runs/beauty/cl4srec-adaptive-$s"
done

for s in $SEEDS; do
  for loss in duorec adaptive; do
    run="runs/beauty/cl4srec-$loss-$s"
    [ -f "$run/results.json" ] || continue
    mkdir -p "$HERE/cl4srec-$loss-$s"
    cp "$run/results.json" "$HERE/cl4srec-$loss-$s/"
    for png in similarities.png thresholds.png alignment_uniformity.png; do
      if [ -f "$run/$png" ]; then cp "$run/$png" "$HERE/cl4srec-$loss-$s/"; fi
    done
  done
  # Paired bootstrap over test users (needs the checkpoints, so it runs on runs/, not on the copies).
  python examples/duorec/compare.py "runs/beauty/cl4srec-adaptive-$s" "runs/beauty/cl4srec-duorec-$s" \
    --json "$HERE/gaps/cl4srec-adaptive-$s-vs-cl4srec-duorec-$s.json"
done
python examples/duorec/summarize.py "$HERE"/cl4srec-* --plot "$HERE/cl4srec_curves.png"
