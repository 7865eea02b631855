"""What a new user meets first: when `dim` is needed, what `print(loss_fn.last)` shows, and what
importing the kernels without Triton says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptive_contrastive import AdaptiveInfoNCE, Diagnostics, ThresholdNet
from adaptive_contrastive.functional import adaptive_info_nce

REPO = Path(__file__).resolve().parents[1]
D = 8


def views(b: int = 6, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = torch.randn(b, d)
    return z1, z1 + 0.5 * torch.randn(b, d)


# --- dim only where a ThresholdNet is built ------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
def test_learned_threshold_needs_dim_and_says_how(mode: str) -> None:
    with pytest.raises(ValueError, match=rf'false_negatives="{mode}" with threshold="learn" .*pass dim=D'):
        AdaptiveInfoNCE(false_negatives=mode)


@pytest.mark.parametrize("dim", [None, D])
def test_keep_builds_no_threshold_net(dim: int | None) -> None:
    """`keep` has no threshold, so the default threshold="learn" has nothing to learn: no
    ThresholdNet, no parameters, L_reg = 0 in every epoch, and the loss is plain InfoNCE."""
    loss_fn = AdaptiveInfoNCE(dim, false_negatives="keep", warmup_epochs=0)
    assert loss_fn.threshold_net is None
    assert list(loss_fn.parameters()) == []
    for _ in range(2):
        z1, z2 = views()
        loss = loss_fn(z1, z2)
        torch.testing.assert_close(loss, adaptive_info_nce(z1, z2, None, false_negatives="keep"))
        assert loss_fn.last is not None
        assert loss_fn.last.mode == "keep" and loss_fn.last.k_learn is None
        assert float(loss_fn.last.loss_reg) == 0.0
        loss_fn.end_epoch()
    assert loss_fn.has_target  # k_stat is still collected, for the diagnostics


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_no_dim_without_a_threshold_net(threshold: float | None) -> None:
    loss_fn = AdaptiveInfoNCE(threshold=threshold, warmup_epochs=0)
    assert loss_fn.threshold_net is None
    assert loss_fn(*views()).shape == ()


def test_learned_threshold_with_dim_builds_the_net() -> None:
    loss_fn = AdaptiveInfoNCE(D, false_negatives="drop")
    assert isinstance(loss_fn.threshold_net, ThresholdNet) and loss_fn.threshold_net.dim == D


@pytest.mark.parametrize("dim", [0, -1, 2.5, True])
def test_bad_dim_is_rejected_even_where_unused(dim: object) -> None:
    with pytest.raises(ValueError, match="dim must be a positive int"):
        AdaptiveInfoNCE(dim, false_negatives="keep")  # type: ignore[arg-type]


# --- Diagnostics: a one-line summary, epochs counted from 1 --------------------------------------


def test_diagnostics_print_one_line_with_the_summary() -> None:
    loss_fn = AdaptiveInfoNCE(D, warmup_epochs=0)
    loss_fn(*views())
    last = loss_fn.last
    assert isinstance(last, Diagnostics)
    text = str(last)
    assert text == repr(last)
    assert "\n" not in text and "tensor(" not in text
    for part in ("epoch=1", "mode='attract'", "k_mean=", "k_stat=", "k_bar=nan", "suspected=", "loss_learn="):
        assert part in text, part
    assert f"k_stat={float(last.k_stat):.4g}" in text
    assert f"k_mean={float(last.k.mean()):.4g}" in text
    assert f"suspected={float(last.false_negative_fraction):.2%}" in text
    assert f"loss_learn={float(last.loss_learn):.4g}" in text
    assert f"loss_reg={float(last.loss_reg):.4g}" in text
    assert last.k.shape == (12,)  # the raw tensors are still there


def test_diagnostics_epoch_counts_as_a_training_loop() -> None:
    """Epoch 1 is the first: after three epochs, the last call reports epoch 3."""
    loss_fn = AdaptiveInfoNCE(D)
    for epoch in range(1, 4):
        for _ in range(2):
            loss_fn(*views())
            assert loss_fn.last is not None and loss_fn.last.epoch == epoch
            assert f"epoch={epoch}," in str(loss_fn.last)
        loss_fn.end_epoch()
    assert loss_fn.epoch == 3
    assert loss_fn.last.mode == "attract"  # epochs 2 and 3 ran the adaptive loss
    assert "k_bar=nan" not in str(loss_fn.last)


def test_diagnostics_of_keep_show_no_threshold() -> None:
    loss_fn = AdaptiveInfoNCE(false_negatives="keep")
    loss_fn(*views())
    assert "k_mean=nan" in str(loss_fn.last) and "suspected=0.00%" in str(loss_fn.last)


# --- the kernels without Triton ---------------------------------------------------------------------


def test_kernels_without_triton_say_how_to_install_it() -> None:
    """A fresh interpreter in which `import triton` fails, as where Triton is not installed."""
    script = (
        "import sys\n"
        "sys.modules['triton'] = None  # makes `import triton` raise ImportError\n"
        "try:\n"
        "    import adaptive_contrastive.kernels\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error.name, '|', error)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    ).stdout
    assert out.startswith("ImportError triton |"), out
    assert 'pip install "adaptive-contrastive[triton]"' in out
    assert 'backend="auto" or "reference"' in out


def test_the_package_imports_without_triton() -> None:
    script = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "import torch, adaptive_contrastive\n"
        "loss_fn = adaptive_contrastive.AdaptiveInfoNCE(4)\n"
        "print(float(loss_fn(torch.randn(3, 4), torch.randn(3, 4))) > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    ).stdout
    assert out.strip() == "True"
