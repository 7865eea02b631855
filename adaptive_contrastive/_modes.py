"""Names of the modes SPEC.md defines, shared by every layer so they are spelled once."""

from __future__ import annotations

FALSE_NEGATIVE_MODES = ("keep", "drop", "attract", "relabel")
MASKS = ("hard", "soft")
# How the soft mask's ν = sigmoid((k - s)/β) is differentiated: "labels" (through the soft labels' dependence on
# the similarities only) or "full" (the exact derivative, which collapses the threshold; see reference.py).
MASK_GRADIENTS = ("labels", "full")
SIMILARITIES = ("cos", "dot")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "reference", "triton")

# Modes whose softmax denominator keeps only the true negatives (paper Eq. 8 and 9).
DENOMINATOR_MASKED = ("drop", "attract")
# Modes whose targets spread mass over the suspected false negatives.
SOFT_LABELLED = ("attract", "relabel")

# ẑ = z / max(‖z‖, NORM_EPS), as SPEC §1 fixes it.
NORM_EPS = 1e-8
