"""Adaptive in-batch contrastive learning for sequential recommendation (AdaptiveRec).

Example:
    >>> import torch
    >>> from adaptive_contrastive import AdaptiveInfoNCE
    >>> loss_fn = AdaptiveInfoNCE(dim=8)
    >>> loss = loss_fn(torch.randn(4, 8), torch.randn(4, 8))
    >>> loss.shape
    torch.Size([])
"""

from .loss import AdaptiveInfoNCE, Diagnostics
from .threshold import ThresholdNet

__version__ = "0.1.0"
__all__ = ["AdaptiveInfoNCE", "Diagnostics", "ThresholdNet", "__version__"]
