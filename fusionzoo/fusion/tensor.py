"""Tensor Fusion and its low-rank factorisation (LMF).

Legend: ``b`` batch, ``m`` modality, ``d`` features, ``p`` product of augmented widths,
``r`` rank, ``o`` output width.

Both fuse the 1-augmented vectors ``[1, x_m]``: the constant keeps every lower-order term, so a
missing modality (whose slot ``prepare`` zeroes) drops out of the interactions and leaves those of
the modalities present; a sample with nothing present gets the learned constant term.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.validation import check_positive_int
from fusionzoo.registry import FUSIONS

__all__ = ["TensorFusion", "LowRankFusion", "augment"]


def augment(x: Tensor) -> Tensor:
    """``[b, d] -> [b, 1 + d]``: prepend a constant 1."""
    return torch.cat([x.new_ones(x.shape[0], 1), x], dim=-1)


def _outer(vectors: list[Tensor]) -> Tensor:
    """Flattened outer product of ``[b, d_i]`` vectors, last one varying fastest: ``[b, prod d_i]``."""
    z = vectors[0]
    for v in vectors[1:]:
        z = rearrange(z.unsqueeze(-1) * v.unsqueeze(1), "b p d -> b (p d)")
    return z


@FUSIONS.register(
    "tensor",
    example_kwargs={"in_dims": {"audio": 4, "text": 6, "visual": 5}, "out_dim": 16},
    reference_kwargs={"in_dims": {"audio": 16, "text": 32, "visual": 16}},  # the full product stays benchmarkable
    paper="https://arxiv.org/abs/1707.07250",
    tags=("tensor", "multiplicative"),
)
class TensorFusion(FusionBlock):
    """Tensor Fusion (Zadeh et al. 2017): ``Linear(flatten(outer_m [1, x_m]))``.

    The weight is one ``[p, o]`` matrix over the product ``p = prod_m (d_m + 1)``. The modality with
    the widest vector goes last; when it saves memory (``p / D_last + D_last * o < p``), the outer
    product of the other modalities (``[b, p / D_last]``) is contracted with the weight viewed as
    ``[p / D_last, D_last * o]`` and then with the last vector, instead of materialising ``[b, p]``.
    Both paths compute the same multilinear map with the same FLOPs. A ``UserWarning`` is raised when
    ``p`` exceeds ``max_product_dim``.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(self, *, in_dims: Mapping[str, int], out_dim: int, max_product_dim: int = 1 << 20) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        # Product order: narrowest first, widest last (ties by name), fixed at construction.
        self.order = tuple(sorted(self.modalities, key=lambda m: (self.in_dims[m], m)))
        sizes = [self.in_dims[m] + 1 for m in self.order]
        self.product_dim = math.prod(sizes)
        if self.product_dim > max_product_dim:
            warnings.warn(
                f"TensorFusion: the outer product has {self.product_dim:,} dimensions (> {max_product_dim:,}); "
                "weights and compute grow with the product of the modality widths: consider low_rank",
                UserWarning,
                stacklevel=2,
            )
        last = sizes[-1]
        self.contract = len(sizes) > 1 and self.product_dim // last + last * out_dim < self.product_dim
        bound = 1.0 / math.sqrt(self.product_dim)
        self.weight = nn.Parameter(torch.empty(self.product_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, _ = self.prepare(features, present)
        vectors = [augment(features[m]) for m in self.order]
        if not self.contract:
            return _outer(vectors) @ self.weight + self.bias
        last = vectors[-1]
        rest = _outer(vectors[:-1])  # [b, p / D_last]
        y = rest @ self.weight.view(rest.shape[1], last.shape[1] * self.out_dim)
        y = rearrange(y, "b (d o) -> b d o", o=self.out_dim)
        return torch.bmm(last.unsqueeze(1), y).squeeze(1) + self.bias


@FUSIONS.register(
    "low_rank",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "rank": 4},
    paper="https://arxiv.org/abs/1806.00064",
    tags=("tensor", "low-rank", "multiplicative"),
)
class LowRankFusion(FusionBlock):
    """Low-rank Multimodal Fusion (Liu et al. 2018): Tensor Fusion with a rank-``r`` weight.

    ``out = sum_r w_r prod_m ([1, x_m] @ F_m[:, r, :]) + bias``. Every factor ``F_m`` is a registered
    parameter of shape ``[d_m + 1, r, o]`` (MultiBench keeps them in a Python list, so they are never
    trained), for exactly ``sum_m (d_m + 1) r o + r + o`` parameters. One ``[b, d_m+1] @ [d_m+1, r*o]``
    matmul per modality; cost linear in the number of modalities.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(self, *, in_dims: Mapping[str, int], out_dim: int, rank: int = 4) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        self.rank = check_positive_int(rank, name="rank", where="LowRankFusion")
        self.factors = nn.ParameterDict()
        for m, d in self.in_dims.items():
            # Xavier-normal on each [d+1, o] slice, as the reference implementation initialises.
            std = math.sqrt(2.0 / (d + 1 + out_dim))
            self.factors[m] = nn.Parameter(std * torch.randn(d + 1, rank, out_dim))
        self.fusion_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.fusion_bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, _ = self.prepare(features, present)
        prod: Tensor | None = None
        for m in self.modalities:
            factor = self.factors[m]
            z = augment(features[m]) @ factor.view(factor.shape[0], -1)
            prod = z if prod is None else prod * z
        prod = rearrange(prod, "b (r o) -> b r o", r=self.rank)
        return torch.einsum("r,bro->bo", self.fusion_weights, prod) + self.fusion_bias
