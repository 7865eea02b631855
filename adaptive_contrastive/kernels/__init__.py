"""Fused Triton backend: `triton_masked_info_nce_rows`, with the contract of `reference.masked_info_nce_rows`.

Importing this package needs Triton; `functional` imports it lazily, only for ``backend="triton"``.
Under ``TRITON_INTERPRET=1`` (set before this package is first imported) the kernels also run on
CPU tensors, slowly: that is how the tests check them without a GPU. float32 inputs run on tensor
cores as 3xTF32 (near-float32 accuracy) unless `set_fp32_precision` chooses "tf32" or "ieee".
"""

try:
    import triton  # noqa: F401
except ImportError as error:
    raise ImportError(
        "adaptive_contrastive.kernels needs Triton >= 3.0 (and a CUDA GPU to run the kernels): "
        'pip install "adaptive-contrastive[triton]". Without it the loss runs on the reference PyTorch '
        'backend (backend="auto" or "reference"), on any device.',
        name="triton",
    ) from error

from .masked_info_nce import (
    FP32_PRECISIONS,
    MAX_DIM,
    MaskedInfoNCETriton,
    fp32_precision,
    set_fp32_precision,
    triton_masked_info_nce_rows,
)

__all__ = [
    "FP32_PRECISIONS",
    "MAX_DIM",
    "MaskedInfoNCETriton",
    "fp32_precision",
    "set_fp32_precision",
    "triton_masked_info_nce_rows",
]
