#!/usr/bin/env bash
# The like-with-like Beauty comparison of examples/duorec/README.md ("Like with like"), from the repository root:
#
#     bash examples/duorec/results/beauty/reproduce_like.sh [SEEDS...]      # default: seeds 0 1
#
# DuoRec and AdaptiveRec with the same cosine similarity at tau = 0.2 (where the contrastive term is not inert;
# the README says why 0.2), DuoRec with its same-target pairs known (dropped from its denominator), and SASRec
# (no contrastive term, so tau does not apply); 6 epochs each (EPOCHS), all other settings the defaults. Every command
# passes --resume, so rerunning continues each run from its last finished epoch. Runs go to runs/beauty/; the
# report copies their results.json next to this script, runs the paired bootstraps and prints the table.
# Environment: BEAUTY (the data file), RUNNER (a prefix for every training command, e.g. a CPU-slot wrapper),
# TRAIN_ARGS (extra train.py flags that do not change a run, e.g. --threads 1), SKIP_REPORT=1 (train only).
set -euo pipefail
DATA=${BEAUTY:-../shared/data/beauty/Beauty.txt}
HERE=examples/duorec/results/beauty
SEEDS=${*:-0 1}
TAU=0.2
EPOCHS=${EPOCHS:-6}
# shellcheck disable=SC2086  # RUNNER and TRAIN_ARGS are word lists
train() { ${RUNNER:-} python examples/duorec/train.py --dataset beauty --data-path "$DATA" --resume --quiet "$@" ${TRAIN_ARGS:-}; }

for s in $SEEDS; do
  C="--contrast us_x --similarity cos --temperature $TAU --seed $s --epochs $EPOCHS"
  train --loss duorec   $C                                 --out "runs/beauty/t02-duorec-cos-$s"
  train --loss adaptive $C                                 --out "runs/beauty/t02-adaptive-$s"
  train --loss duorec   $C --known-positives same-target   --out "runs/beauty/t02-duorec-same-target-$s"
done
for s in $SEEDS; do
  train --loss none --seed "$s" --epochs "$EPOCHS" --out "runs/beauty/like-sasrec-$s"
done
[ "${SKIP_REPORT:-0}" = 1 ] && exit 0

for s in $SEEDS; do
  for name in t02-duorec-cos t02-adaptive t02-duorec-same-target like-sasrec; do
    run=runs/beauty/$name-$s
    [ -f "$run/results.json" ] || continue
    mkdir -p "$HERE/$name-$s" && cp "$run/results.json" "$HERE/$name-$s/"
  done
done
# Paired bootstraps over test users, per seed (they need the checkpoints, so they run on the run folders).
gap() { python examples/duorec/compare.py "runs/beauty/$1" "runs/beauty/$2" --json "$HERE/gaps/$1-vs-$2.json"; }
for s in $SEEDS; do
  gap "t02-adaptive-$s" "t02-duorec-cos-$s"
  gap "t02-duorec-same-target-$s" "t02-duorec-cos-$s"
  gap "t02-adaptive-$s" "like-sasrec-$s"
  gap "t02-duorec-cos-$s" "like-sasrec-$s"
done
python examples/duorec/summarize.py "$HERE"/t02-* "$HERE"/like-sasrec-* --metrics NDCG@10 MRR@10 Recall@10 NDCG@20
