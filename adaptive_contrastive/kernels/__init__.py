"""Fused Triton backend: `triton_masked_info_nce_rows`, with the contract of `reference.masked_info_nce_rows`.

Importing this package needs Triton; `functional` imports it lazily, only for ``backend="triton"``.
Under ``TRITON_INTERPRET=1`` (set before this package is first imported) the kernels also run on
CPU tensors, slowly: that is how the tests check them without a GPU. float32 inputs run on tensor
cores as 3xTF32 (near-float32 accuracy) unless `set_fp32_precision` chooses "tf32" or "ieee".
"""

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
