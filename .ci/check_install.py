"""Run by the Python of a fresh environment that has just installed the wheel: the package imports from
that environment, not from the checkout, its requirements are met, and the loss runs.

Usage (from a folder outside the checkout): VENV/bin/python /path/to/.ci/check_install.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.requirements import Requirement


def main() -> None:
    import torch

    import adaptive_contrastive
    from adaptive_contrastive import AdaptiveInfoNCE

    assert adaptive_contrastive.__file__.startswith(sys.prefix), f"imported {adaptive_contrastive.__file__}"
    meta = distribution("adaptive-contrastive")
    assert meta.version == adaptive_contrastive.__version__
    met = []
    for line in meta.requires or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            raise SystemExit(f"requirement {requirement} is not installed") from None
        assert requirement.specifier.contains(installed, prereleases=True), f"{requirement}: found {installed}"
        met.append(f"{requirement} ({installed})")

    from adaptive_contrastive import cpu

    # The compiled CPU kernel builds from the wheel's own C source (this machine has a C compiler), into an empty
    # cache, so that a library built by the test run cannot stand in for it.
    os.environ["ADAPTIVE_CONTRASTIVE_CACHE"] = tempfile.mkdtemp()
    reason = cpu.unavailable_reason()
    assert reason is None, f"the CPU kernel did not build from the installed wheel: {reason}"
    torch.manual_seed(0)
    loss_fn = AdaptiveInfoNCE(dim=16, warmup_epochs=0)
    z1 = torch.randn(8, 16, requires_grad=True)
    loss = loss_fn(z1, z1.detach() + 0.1 * torch.randn(8, 16))
    loss.backward()
    assert z1.grad is not None and bool(torch.isfinite(z1.grad).all())
    print(f"adaptive-contrastive {adaptive_contrastive.__version__} from {adaptive_contrastive.__file__}")
    print(f"requirements met: {', '.join(met)}")
    print(f"torch {torch.__version__}: loss {float(loss.detach()):.4f}; {loss_fn.last}")
    try:
        import adaptive_contrastive.kernels  # noqa: F401

        print("adaptive_contrastive.kernels imports (Triton is installed)")
    except ImportError as error:
        print(f"adaptive_contrastive.kernels: {error}")


if __name__ == "__main__":
    main()
