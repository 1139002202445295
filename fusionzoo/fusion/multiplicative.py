"""Multiplicative interactions: one modality generates the weight and bias applied to another.

Legend: ``b`` batch, ``i`` target features, ``k`` conditioner features, ``o`` output width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.fusion.gating import split_roles
from fusionzoo.layers.masking import fill_missing, mask_of, presence_flags, stack_masks
from fusionzoo.registry import FUSIONS

__all__ = ["MultiplicativeFusion"]


@FUSIONS.register(
    "multiplicative",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "target": "visual"},
    role_args=("target",),
    paper="https://openreview.net/forum?id=rylnK6VtDH",
    tags=("multiplicative", "hypernetwork"),
)
class MultiplicativeFusion(FusionBlock):
    """Multiplicative interactions (Jayakumar et al. 2020; MultiBench's MI, matrix form).

    ``out = x_t W(c) + b(c)`` with ``W(c) = W_0 + sum_k c_k W_k`` and ``b(c) = b_0 + U c``, where
    ``c`` concatenates the conditioners and their presence flags. The bilinear term is two
    contractions: the wider of ``x_t`` and ``c`` with the hyper-weight in one matmul, then the other
    in one batched matmul; the hyper-weight is stored ``[i, k, o]`` or ``[k, i, o]`` to match
    (:attr:`hyper_weight_kio` always reads it as ``[k, i, o]``).
    A missing target is replaced by a learned embedding; missing conditioners contribute 0, which
    leaves ``x_t W_0 + b_0``.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        target: str,
        conditioners: Sequence[str] | None = None,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        self.target, self.conditioners = split_roles(self.modalities, target, conditioners, "MultiplicativeFusion")
        i = self.in_dims[self.target]
        k = sum(self.in_dims[c] for c in self.conditioners) + len(self.conditioners)
        self.base = nn.Linear(i, out_dim)
        self.cond_bias = nn.Linear(k, out_dim, bias=False)
        bound = 1.0 / math.sqrt(i * k)
        # Contract the wider input first: the [b, narrower * o] intermediate is the smaller one.
        self.target_first = k < i
        shape = (i, k, out_dim) if self.target_first else (k, i, out_dim)
        self.hyper_weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.missing_target = nn.Parameter(0.02 * torch.randn(i))

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        x = fill_missing(features[self.target], mask_of(present, self.target), self.missing_target)
        flags = presence_flags(stack_masks(present, self.conditioners), x, len(self.conditioners))
        c = torch.cat([features[m] for m in self.conditioners] + [flags], dim=-1)
        first, second = (x, c) if self.target_first else (c, x)
        n1, n2, o = self.hyper_weight.shape
        partial = rearrange(first @ self.hyper_weight.view(n1, n2 * o), "b (n o) -> b n o", n=n2)
        y = torch.bmm(second.unsqueeze(1), partial).squeeze(1)
        return self.base(x) + y + self.cond_bias(c)

    @property
    def hyper_weight_kio(self) -> Tensor:
        """The hyper-weight as ``[k, i, o]`` whatever its storage order (a view, no copy)."""
        return self.hyper_weight.transpose(0, 1) if self.target_first else self.hyper_weight
