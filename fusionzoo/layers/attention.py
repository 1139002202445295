"""Attention building blocks on ``scaled_dot_product_attention`` (flash / memory-efficient kernels).

Legend: ``b`` batch, ``n`` query tokens, ``s`` key tokens, ``k`` heads, ``d`` features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.layers.mlp import MLP, get_activation

__all__ = ["attention_probs", "Attention", "TransformerBlock", "CrossAttentionBlock", "GroupedLinear", "GroupedLayerNorm", "GroupedCrossAttentionBlock"]


def attention_probs(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """The probabilities ``softmax(q k^T / sqrt(d))`` that ``scaled_dot_product_attention`` applies
    (without dropout), masked keys at 0: for reading attention, never in a forward pass.

    Shapes: q ``[..., n, d]``, k ``[..., s, d]``, mask bool broadcastable to ``[..., n, s]`` -> ``[..., n, s]``.
    """
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


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

    def probs(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``[b, k, n, s]``: the attention probabilities of :meth:`forward` (in eval mode) per head."""
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (k d) -> b k n d", k=self.num_heads)
        k = rearrange(self.to_kv(context), "b s (two k d) -> two b k s d", two=2, k=self.num_heads)[0]
        return attention_probs(q, k, None if mask is None else rearrange(mask, "b s -> b 1 1 s"))


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


# ---------------------------------------------------------------- grouped: G independent blocks as one


class GroupedLinear(nn.Module):
    """``groups`` independent linear layers applied as one batched matmul (``baddbmm``).

    Each group is initialised as ``nn.Linear`` is. Shapes: ``[g, ..., in] -> [g, ..., out]``.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        g, *middle, d = x.shape
        y = torch.baddbmm(self.bias.unsqueeze(1), x.reshape(g, -1, d), self.weight)
        return y.view(g, *middle, -1)


class GroupedLayerNorm(nn.Module):
    """``groups`` independent LayerNorms over the last dim. Shapes: ``[g, ..., d] -> [g, ..., d]``."""

    def __init__(self, groups: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, dim))
        self.bias = nn.Parameter(torch.zeros(groups, dim))

    def forward(self, x: Tensor) -> Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return torch.addcmul(self.bias.view(shape), F.layer_norm(x, x.shape[-1:], eps=self.eps), self.weight.view(shape))


class GroupedCrossAttentionBlock(nn.Module):
    """``groups`` independent :class:`CrossAttentionBlock` s (pre-norm cross-attention + MLP) run as
    one computation: batched matmuls over the groups and one SDPA call over ``groups * b`` rows.

    Shapes: x ``[g, b, n, dim]``, context ``[g, b, s, dim]``, mask bool ``[g, b, s]`` (True = attend)
    -> ``[g, b, n, dim]``.
    """

    def __init__(self, groups: int, dim: int, *, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.norm_q, self.norm_kv, self.norm2 = (GroupedLayerNorm(groups, dim) for _ in range(3))
        self.to_q = GroupedLinear(groups, dim, dim)
        self.to_kv = GroupedLinear(groups, dim, 2 * dim)
        self.to_out = GroupedLinear(groups, dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.act, self.fc2 = GroupedLinear(groups, dim, hidden), get_activation("gelu"), GroupedLinear(groups, hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        g = x.shape[0]
        q = rearrange(self.to_q(self.norm_q(x)), "g b n (k d) -> (g b) k n d", k=self.num_heads)
        k, v = rearrange(self.to_kv(self.norm_kv(context)), "g b s (two k d) -> two (g b) k s d", two=2, k=self.num_heads)
        attn_mask = None if mask is None else rearrange(mask, "g b s -> (g b) 1 1 s")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.to_out(rearrange(out, "(g b) k n d -> g b n (k d)", g=g))
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm2(x)))))

    def probs(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[g, b, k, n, s]``: the attention probabilities of :meth:`forward` (in eval mode) per head."""
        q = rearrange(self.to_q(self.norm_q(x)), "g b n (k d) -> g b k n d", k=self.num_heads)
        k = rearrange(self.to_kv(self.norm_kv(context)), "g b s (two k d) -> two g b k s d", two=2, k=self.num_heads)[0]
        return attention_probs(q, k, None if mask is None else rearrange(mask, "g b s -> g b 1 1 s"))
