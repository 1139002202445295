"""Attention building blocks on ``scaled_dot_product_attention`` (flash / memory-efficient kernels).

Legend: ``b`` batch, ``n`` query tokens, ``s`` key tokens, ``k`` heads, ``d`` features.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.layers.mlp import MLP

__all__ = ["Attention", "TransformerBlock", "CrossAttentionBlock"]


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, cross-attention otherwise.

    Shapes: x ``[b, n, dim]``, context ``[b, s, context_dim]``, mask bool ``[b, s]`` (True = attend)
    -> ``[b, n, dim]``. A query whose keys are all masked gets NaN from SDPA, so callers keep at
    least one valid key per row (a CLS token, a learned null token, the latents themselves).
    """

    def __init__(self, dim: int, *, num_heads: int, context_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (k d) -> b k n d", k=self.num_heads)
        k, v = rearrange(self.to_kv(context), "b s (two k d) -> two b k s d", two=2, k=self.num_heads)
        attn_mask = None if mask is None else rearrange(mask, "b s -> b 1 1 s")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.to_out(rearrange(out, "b k n d -> b n (k d)"))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block.

    Shapes: x ``[b, n, dim]``, mask bool ``[b, n]`` -> ``[b, n, dim]``.
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, [int(dim * mlp_ratio)], dim, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries from ``x``, keys/values from ``context``) + MLP block.

    Shapes: x ``[b, n, dim]``, context ``[b, s, context_dim]``, mask bool ``[b, s]`` -> ``[b, n, dim]``.
    """

    def __init__(
        self, dim: int, *, context_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(context_dim)
        self.attn = Attention(dim, num_heads=num_heads, context_dim=context_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, [int(dim * mlp_ratio)], dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context), mask=mask)
        return x + self.mlp(self.norm2(x))
