"""DuoRec's encoder: a SASRec-style causal transformer over item sequences (Qiu et al., WSDM 2022).

As in DuoRec's RecBole configuration: 2 layers, 2 heads, hidden size 64, feed-forward size 256,
GELU, dropout 0.5 on hidden states and attention weights, post-LayerNorm (eps 1e-12), N(0, 0.02)
initialisation, and the item embedding table tied with the output layer (scores = h · E_itemᵀ).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# isort: split
from data import Batch


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On CPU the mask comes from ``rand_like`` (about 3x faster than the
    ``bernoulli_`` behind ``F.dropout``, same distribution); elsewhere it is ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    keep = torch.rand_like(x) >= p
    return x * keep / (1.0 - p)


class TransformerLayer(nn.Module):
    """Post-LN self-attention block with causal attention, as RecBole's `TransformerLayer`."""

    def __init__(self, hidden: int, heads: int, inner: int, p: float, attn_p: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.heads = heads
        self.p = p
        self.attn_p = attn_p
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ff_in = nn.Linear(hidden, inner)
        self.ff_out = nn.Linear(inner, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)

    def attention(self, x: Tensor) -> Tensor:
        """Causal multi-head attention `(R, L, D)` → `(R, L, D)`, dropout on the attention weights."""
        rows, length, dim = x.shape
        qkv = self.qkv(x).view(rows, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (R, H, L, D/H)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)  # (R, H, L, L)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        attended = dropout(weights, self.attn_p, self.training) @ v
        return attended.transpose(1, 2).reshape(rows, length, dim)

    def forward(self, x: Tensor) -> Tensor:
        """`(R, L, D)` → `(R, L, D)`; position t attends to positions <= t only."""
        x = self.norm1(x + dropout(self.proj(self.attention(x)), self.p, self.training))
        hidden = self.ff_out(F.gelu(self.ff_in(x)))
        return self.norm2(x + dropout(hidden, self.p, self.training))


class DuoRec(nn.Module):
    """Sequence encoder and next-item scorer.

    Inputs are right-padded with item 0: with causal attention the real positions never see the
    padding, so the representation of a sequence (the output at its last item) does not depend on
    the padded width.

    Args:
        n_items: number of items (ids 1..n_items; 0 is padding).
        max_len: longest input (number of position embeddings).
        hidden, layers, heads, inner: transformer sizes.
        dropout: dropout on the embeddings and after each sub-layer.
        attn_dropout: dropout on the attention weights.
        mask_token: add an input-only [mask] item, id ``n_items + 1`` (`mask_id`), for CL4SRec's item-mask
            views; it has its own embedding row and is never a candidate of `item_scores`.

    Example:
        >>> model = DuoRec(n_items=10)
        >>> model(torch.tensor([[1, 2, 0], [3, 4, 5]]), torch.tensor([2, 3])).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 2,
        inner: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        mask_token: bool = False,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.mask_id = n_items + 1 if mask_token else None
        self.item_embedding = nn.Embedding(n_items + 1 + int(mask_token), hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.p = dropout
        self.layers = nn.ModuleList(
            TransformerLayer(hidden, heads, inner, dropout, attn_dropout) for _ in range(layers)
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, seqs: Tensor, lengths: Tensor) -> Tensor:
        """`(R, L)` right-padded item ids with `(R,)` lengths → `(R, D)` sequence representations."""
        if seqs.shape[1] > self.max_len:
            raise ValueError(f"inputs are {seqs.shape[1]} items long, the model takes at most max_len={self.max_len}")
        positions = torch.arange(seqs.shape[1], device=seqs.device)
        x = dropout(self.norm(self.item_embedding(seqs) + self.position_embedding(positions)), self.p, self.training)
        for layer in self.layers:
            x = layer(x)
        return x[torch.arange(seqs.shape[0], device=seqs.device), lengths - 1]

    def encode(self, batch: Batch) -> Tensor:
        """Representations `(batch.size, D)` of a length-grouped batch, rows in batch order."""
        if not batch.groups:
            raise ValueError("empty batch")
        rows = torch.cat([group.rows for group in batch.groups])
        h = torch.cat([self(group.seqs, group.lengths) for group in batch.groups])
        return h[torch.argsort(rows)]  # the groups' rows are a permutation of 0..size-1

    def item_scores(self, h: Tensor) -> Tensor:
        """Scores `(R, n_items)` of items 1..n_items (column j is item j + 1; padding and mask excluded)."""
        return h @ self.item_embedding.weight[1 : self.n_items + 1].T

    def next_item_loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of the targets (item ids 1..n) over all items."""
        return F.cross_entropy(self.item_scores(h), targets - 1)
