#!/usr/bin/env bash
# The ML-1M rows of the paper's table (SASRec, DuoRec, AdaptiveRec) with the papers' budget: up to 300
# epochs, early stopping on validation NDCG@10 with patience 10. NOT RUN for this repository: the
# file cannot be downloaded on the machine the results were made on. From the repository root:
#
#     bash examples/duorec/results/ml-1m/reproduce.sh [SEEDS...]           # default: seeds 0 1 2
#
# With ML1M=/path/to/ml-1m/ratings.dat (or the official ml-1m.zip) the file is read from there;
# otherwise --download fetches ml-1m.zip from grouplens.org and checks its sha256. --resume makes the
# script continue where it stopped; the last step prints the table with the paper's numbers.
set -euo pipefail
if [ -n "${ML1M:-}" ]; then SOURCE=(--data-path "$ML1M"); else SOURCE=(--download); fi
SEEDS=${*:-0 1 2}
train() { python examples/duorec/train.py --dataset ml-1m "${SOURCE[@]}" --resume --quiet "$@"; }

python examples/duorec/train.py --dataset ml-1m "${SOURCE[@]}" --stats-only  # the papers: 6,040 / 3,416 / 999,611
for s in $SEEDS; do
  train --loss none                     --seed "$s" --out "runs/ml-1m/sasrec-$s"
  train --loss duorec   --contrast us_x --seed "$s" --out "runs/ml-1m/duorec-$s"
  train --loss adaptive --contrast us_x --seed "$s" --out "runs/ml-1m/adaptive-$s"
done
python examples/duorec/summarize.py runs/ml-1m --plot runs/ml-1m/curves.png
