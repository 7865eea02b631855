#!/usr/bin/env bash
# Every Beauty run of examples/duorec/README.md ("Amazon Beauty: SASRec, DuoRec, AdaptiveRec"), from the
# repository root:
#
#     bash examples/duorec/results/beauty/reproduce.sh [SEEDS...]      # default: seed 0
#
# Each command passes --resume, so rerunning the script after an interrupt continues every run from
# its last finished epoch (a finished run is only re-evaluated). Runs go to runs/beauty/<name>-<seed>;
# the last step copies their results.json (no checkpoints) next to this script.
# Budget: 10 epochs for the main comparison, 6 for the ablation (2-core CPU, no GPU; see the README).
set -euo pipefail
DATA=${BEAUTY:-../shared/data/beauty/Beauty.txt}
HERE=examples/duorec/results/beauty
SEEDS=${*:-0}
train() { python examples/duorec/train.py --dataset beauty --data-path "$DATA" --resume --quiet "$@"; }

for s in $SEEDS; do
  # Main comparison: same budget and hyperparameters (lr 1e-3, batch 256, tau 1, lambda 0.1).
  train --loss none                                   --seed "$s" --epochs 10 --out "runs/beauty/sasrec-$s"
  train --loss duorec   --contrast us_x               --seed "$s" --epochs 10 --out "runs/beauty/duorec-$s"
  train --loss adaptive --contrast us_x               --seed "$s" --epochs 10 --out "runs/beauty/adaptive-$s"
done

# Ablation, one seed, 6 epochs: the main runs' three configurations at this budget, DuoRec with the
# cosine similarity of AdaptiveRec (a control), then one change to AdaptiveRec per row, and the
# authors' code's mode (relabel) with DuoRec's dot similarity. The soft mask twice: e6-soft-0 with its exact
# derivative (the only one when it ran: its threshold collapsed), e6-soft-labels-0 with the default, through the
# soft labels only (examples/duorec/README.md, "The soft mask").
A="--contrast us_x --seed 0 --epochs 6"
train --loss none                                     --seed 0 --epochs 6 --out runs/beauty/e6-sasrec-0
train --loss duorec   $A                                              --out runs/beauty/e6-duorec-0
train --loss duorec   $A --similarity cos                             --out runs/beauty/e6-duorec-cos-0
train --loss adaptive $A                                              --out runs/beauty/e6-adaptive-0
train --loss adaptive $A --false-negatives drop                       --out runs/beauty/e6-drop-0
train --loss adaptive $A --false-negatives relabel                    --out runs/beauty/e6-relabel-0
train --loss adaptive $A --mask soft --mask-gradient full              --out runs/beauty/e6-soft-0
train --loss adaptive $A --mask soft                                  --out runs/beauty/e6-soft-labels-0
train --loss adaptive $A --threshold-arch flat                        --out runs/beauty/e6-flat-0
train --loss adaptive $A --similarity dot                             --out runs/beauty/e6-dot-0
train --loss adaptive $A --similarity dot --false-negatives relabel   --out runs/beauty/e6-relabel-dot-0

for run in runs/beauty/*/; do
  [ -f "$run/results.json" ] || continue
  name=$(basename "$run")
  mkdir -p "$HERE/$name" && cp "$run/results.json" "$HERE/$name/"
done
# Paired bootstraps over test users (need the checkpoints, so they run here, not from the copies).
gap() { python examples/duorec/compare.py "runs/beauty/$1" "runs/beauty/$2" --json "$HERE/gaps/$1-vs-$2.json"; }
gap adaptive-0 duorec-0
gap adaptive-0 sasrec-0
gap e6-adaptive-0 e6-duorec-cos-0
gap e6-relabel-dot-0 e6-duorec-0
python examples/duorec/summarize.py "$HERE"
