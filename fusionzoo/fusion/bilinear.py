"""Multimodal factorized bilinear pooling (MFB) for two modalities.

Legend: ``b`` batch, ``d`` features, ``k`` factor, ``o`` output width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from fusionzoo.fusion.base import FusionBlock
from fusionzoo.layers.masking import fill_missing, mask_of
from fusionzoo.layers.validation import check_positive_int
from fusionzoo.registry import FUSIONS

__all__ = ["BilinearFusion"]


@FUSIONS.register(
    "bilinear",
    example_kwargs={"in_dims": {"audio": 12, "visual": 16}, "out_dim": 16, "factor": 3},
    num_modalities=2,
    paper="https://arxiv.org/abs/1708.01471",
    tags=("bilinear", "multiplicative"),
)
class BilinearFusion(FusionBlock):
    """MFB (Yu et al. 2017): ``z = sum-pool_k(U x ∘ V y)``, power-normalised, L2-normalised.

    Exactly two modalities (more raise a ``ValueError``: use ``low_rank`` or ``tensor``). A missing
    modality is replaced by a learned per-modality embedding, so the bilinear term stays defined.
    The power normalisation is ``sign(z) sqrt(|z| + eps) - sign(z) sqrt(eps)``: zero at zero with a
    finite gradient (the reference ``sqrt(relu(z))`` has an infinite one there).

    Shapes: ``{a: [b, d_a], v: [b, d_v]} -> [b, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(
        self, *, in_dims: Mapping[str, int], out_dim: int, factor: int = 5, dropout: float = 0.0, eps: float = 1e-6
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        if len(self.modalities) != 2:
            raise ValueError(
                f"BilinearFusion (MFB) fuses exactly 2 modalities, got {len(self.modalities)} "
                f"({', '.join(self.modalities)}); use low_rank or tensor for more"
            )
        self.factor = check_positive_int(factor, name="factor", where="BilinearFusion")
        self.eps = eps
        self.proj = nn.ModuleDict({m: nn.Linear(d, factor * out_dim) for m, d in self.in_dims.items()})
        self.missing = nn.ParameterDict({m: nn.Parameter(0.5 * torch.randn(d)) for m, d in self.in_dims.items()})
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        a, v = (
            self.proj[m](fill_missing(features[m], mask_of(present, m), self.missing[m])) for m in self.modalities
        )
        z = reduce(self.dropout(a * v), "b (o k) -> b o", "sum", k=self.factor)
        root_eps = self.eps**0.5
        z = torch.sign(z) * (torch.sqrt(z.abs() + self.eps) - root_eps)
        return F.normalize(z, dim=-1)
