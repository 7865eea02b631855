"""Training recipes of the DuoRec example (``--recipe``): whole configurations under one name.

- ``default``: the example's own settings (nothing changes).
- ``authors``: the AdaptiveRec authors' released code (a RecBole fork) as closely as the public API
  allows: their threshold network g on the flattened next-item representations, not detached;
  thresholds in logit units (s/τ) compared with the logits; the ``relabel`` loss from the first step
  with the untrained g; L_reg = ‖k − k̄_stat‖₂ (unsquared) weighted 0.1 outside λ_cl; batch 1024 with
  incomplete batches dropped; Adam on timm's cosine schedule with a 5-epoch warm-up; at most 100
  epochs, patience 10 on validation NDCG@10; cosine similarity, τ = 1, λ_cl = 0.1 for every model.
  With ``--loss duorec`` or ``--loss none`` it is their DuoRec or SASRec training set-up.
- ``duorec``: DuoRec's own code (Qiu et al.): plain InfoNCE with dot similarity, τ = 1, batch 256,
  constant lr 1e-3, at most 50 epochs, patience 10 on validation MRR@10.

A recipe only fills in settings the command line leaves out: ``--recipe authors --epochs 10`` is the
authors' recipe with a 10-epoch budget. The remaining differences from the released code are listed
in the example's README ("Recipes").
"""

from __future__ import annotations

import argparse
import math
from typing import Any

RECIPES = ("default", "authors", "duorec")

# The command-line settings each recipe fills in (argparse destinations).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "authors": {
        "contrast": "us_x",
        "similarity": "cos",
        "temperature": 1.0,
        "lmd": 0.1,
        "false_negatives": "relabel",
        "mask": "hard",
        "threshold_arch": "authors",
        "threshold_input": "next-item",
        "warmup_epochs": 0,
        "batch_size": 1024,
        "drop_last": True,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "epochs": 100,
        "patience": 10,
        "early_stop_metric": "NDCG@10",
    },
    "duorec": {
        "loss": "duorec",
        "contrast": "us_x",
        "similarity": "dot",
        "temperature": 1.0,
        "lmd": 0.1,
        "batch_size": 256,
        "lr": 1e-3,
        "lr_schedule": "constant",
        "epochs": 50,
        "patience": 10,
        "early_stop_metric": "MRR@10",
    },
}

# The authors' L_reg weight: total = CE + λ_cl·L_learn + AUTHORS_REG·‖k − k̄_stat‖₂.
AUTHORS_REG = 0.1
# timm's CosineLRScheduler as the authors configure it: warm-up epochs, and the floor and warm-up
# start as a fraction of the base lr (1e-4 for lr 1e-3).
COSINE_WARMUP_EPOCHS = 5
COSINE_FLOOR = 0.1


def explicit_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options given on the command line `argv` (not left at their defaults)."""
    defaults = {action.dest: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        given = parser.parse_args(argv)
    finally:
        for action in parser._actions:
            action.default = defaults[action.dest]
    return set(vars(given))


def apply(args: argparse.Namespace, explicit: set[str]) -> None:
    """Fill in `args.recipe`'s settings wherever the command line did not set them."""
    for name, value in SETTINGS[args.recipe].items():
        if name not in explicit:
            setattr(args, name, value)
    if args.recipe == "authors" and args.loss != "adaptive" and "false_negatives" not in explicit:
        # Their mode is AdaptiveRec's; DuoRec given known positives keeps the trainer's default (drop).
        args.false_negatives = None


def adaptive_loss_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of `AdaptiveInfoNCE` that the recipe sets beyond the command line's flags.

    ``authors``: L_reg = ‖k − k̄_stat‖₂ weighted 0.1 in the total loss (so reg_weight = 0.1/λ_cl inside
    L_cl), thresholds in logit units, L_reg's gradient reaching the encoder through g's input, no
    calibration of the untrained g, and k_stat exact over all 2B(2B−2) candidate pairs.
    """
    if args.recipe != "authors":
        return {}
    n = 2 * args.batch_size
    return {
        "reg_norm": "l2",
        "reg_weight": AUTHORS_REG / args.lmd,
        "threshold_units": "logit",
        "detach_threshold_input": False,
        "calibrate": False,
        "max_pairs": max(4, n * (n - 2)),
    }


def cosine_lr(
    epoch: int, base: float, epochs: int, warmup: int = COSINE_WARMUP_EPOCHS, floor: float = COSINE_FLOOR
) -> float:
    """The learning rate of epoch `epoch` (0-based) under timm's ``CosineLRScheduler`` with
    ``t_initial=epochs, lr_min=floor·base, warmup_t=warmup, warmup_lr_init=floor·base`` and its
    defaults (no warm-up prefix, one cycle), stepped with the epoch index: a linear warm-up from
    floor·base, then the cosine of the whole schedule's epoch index, floor·base from `epochs` on."""
    low = floor * base
    if epoch < warmup:
        return low + epoch * (base - low) / warmup
    if epoch >= epochs:
        return low
    return low + 0.5 * (base - low) * (1.0 + math.cos(math.pi * epoch / epochs))


def learning_rate(args: argparse.Namespace, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) under ``--lr-schedule``."""
    if args.lr_schedule == "cosine":
        return cosine_lr(epoch, args.lr, args.epochs)
    return args.lr
