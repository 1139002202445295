"""Gating fusion: the Gated Multimodal Unit (GMU) and feature-wise linear modulation (FiLM).

Legend: ``b`` batch, ``m`` modality, ``d`` features, ``h`` hidden width, ``o`` output width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.masking import fill_missing, mask_of, masked_softmax, presence_flags, stack_masks, unless_empty
from fusionzoo.layers.mlp import get_activation
from fusionzoo.registry import FUSIONS

__all__ = ["GatedMultimodalUnit", "FiLMFusion", "split_roles"]


def split_roles(
    modalities: tuple[str, ...], target: str, conditioners: Sequence[str] | None, where: str
) -> tuple[str, tuple[str, ...]]:
    """Check a ``target`` modality and its ``conditioners`` (default: every other modality)."""
    if target not in modalities:
        raise ValueError(f"{where}: target {target!r} is not one of the block's modalities {list(modalities)}")
    others = tuple(m for m in modalities if m != target)
    conds = tuple(sorted(conditioners)) if conditioners is not None else others
    if not conds:
        raise ValueError(f"{where}: needs at least one conditioner modality besides target {target!r}")
    for c in conds:
        if c not in others:
            raise ValueError(f"{where}: conditioner {c!r} must be one of {list(others)} (not the target)")
    unused = sorted(set(others) - set(conds))
    if unused:
        raise ValueError(f"{where}: modalities {unused} are in in_dims but neither target nor conditioner")
    return target, conds


@FUSIONS.register(
    "gmu",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16},
    paper="https://arxiv.org/abs/1702.01992",
    tags=("gating",),
)
class GatedMultimodalUnit(FusionBlock):
    """Gated Multimodal Unit (Arevalo et al. 2017) for N modalities.

    ``h_m = tanh(W_m x_m)``; gates ``z = softmax_m(W_z [x_1, ..., x_N, flags])`` per output feature;
    ``out = sum_m z_m * h_m``. With two modalities the softmax of two logits is a sigmoid of their
    difference, which is the paper's bimodal ``z * h_1 + (1 - z) * h_2``. Missing modalities are
    masked out of the softmax; a sample with nothing present returns a learned vector.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``; gates ``[b, m, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(self, *, in_dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        num = len(self.modalities)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in self.in_dims.items()})
        self.gate = nn.Linear(sum(self.in_dims.values()) + num, num * out_dim)
        self.empty = nn.Parameter(torch.zeros(out_dim))

    def gates(self, features: dict[str, Tensor], present: dict[str, Tensor] | None) -> Tensor:
        """Per-feature softmax gates over modalities (0 for missing ones); expects ``prepare``d inputs."""
        mask = stack_masks(present, self.modalities)
        flags = presence_flags(mask, features[self.modalities[0]], len(self.modalities))
        x = torch.cat([features[m] for m in self.modalities] + [flags], dim=-1)
        logits = rearrange(self.gate(x), "b (m o) -> b m o", m=len(self.modalities))
        return masked_softmax(logits, None if mask is None else rearrange(mask, "b m -> b m 1").expand_as(logits), dim=1)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        h = torch.stack([torch.tanh(self.proj[m](features[m])) for m in self.modalities], dim=1)
        gates = self.gates(features, present)
        fused = (gates * h).sum(dim=1)
        return unless_empty(fused, stack_masks(present, self.modalities), self.empty)  # from the mask, not the gates


@FUSIONS.register(
    "film",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "target": "visual", "hidden_dim": 24},
    role_args=("target",),
    paper="https://arxiv.org/abs/1709.07871",
    tags=("gating", "conditioning"),
)
class FiLMFusion(FusionBlock):
    """FiLM (Perez et al. 2018): the conditioner modalities scale and shift the target's features.

    ``h = W_t x_t``; ``(gamma, beta) = W_c [x_c..., flags]``; ``out = W_o act((1 + gamma) * h + beta)``.
    A missing target is replaced by a learned hidden vector (still modulated, so the conditioners
    alone give a prediction); when every conditioner is missing the modulation is the identity.

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
        hidden_dim: int = 256,
        activation: str = "relu",
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        self.target, self.conditioners = split_roles(self.modalities, target, conditioners, "FiLMFusion")
        cond_dim = sum(self.in_dims[c] for c in self.conditioners) + len(self.conditioners)
        self.target_proj = nn.Linear(self.in_dims[self.target], hidden_dim)
        self.missing_target = nn.Parameter(0.02 * torch.randn(hidden_dim))
        self.film = nn.Linear(cond_dim, 2 * hidden_dim)
        self.act = get_activation(activation)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        t = self.target
        h = fill_missing(self.target_proj(features[t]), mask_of(present, t), self.missing_target)
        flags = stack_masks(present, self.conditioners)
        cond = torch.cat([features[c] for c in self.conditioners] + [presence_flags(flags, h, len(self.conditioners))], dim=-1)
        gamma, beta = self.film(cond).chunk(2, dim=-1)
        h = unless_empty((1 + gamma) * h + beta, flags, h)
        return self.out(self.act(h))
