"""Late fusion: one head per modality, outputs combined by a weighted average.

Legend: ``b`` batch, ``m`` modality, ``d`` features, ``o`` output width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.masking import masked_softmax, presence_flags, stack_masks, unless_empty
from fusionzoo.layers.mlp import MLP
from fusionzoo.registry import FUSIONS

__all__ = ["WeightedLateFusion"]

WEIGHTINGS = ("fixed", "learned", "gated")
COMBINES = ("logits", "probs")


@FUSIONS.register(
    "weighted_late",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 10, "weighting": "gated"},
    tags=("late",),
)
class WeightedLateFusion(FusionBlock):
    """Per-modality heads to ``out_dim``, combined by weights renormalised over present modalities.

    ``weighting``: ``"fixed"`` (the given ``weights``), ``"learned"`` (softmax over learnable
    scalars) or ``"gated"`` (a per-sample softmax from a gate network that sees every modality's
    features and presence). ``combine="logits"`` averages the heads' outputs; ``combine="probs"``
    averages their softmax probabilities and returns log-probabilities (computed as a logsumexp,
    never as ``log(0)``). A sample with nothing present returns a learned output.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``; :meth:`modality_weights` ``-> [b, m]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        weighting: str = "learned",
        weights: Mapping[str, float] | None = None,
        combine: str = "logits",
        hidden_dims: Sequence[int] = (),
        gate_hidden_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if (weights is not None) != (weighting == "fixed"):
            raise ValueError("weights are given exactly when weighting='fixed'")
        self.weighting = weighting
        self.combine = combine
        self.heads = nn.ModuleDict(
            {m: MLP(d, list(hidden_dims), out_dim, dropout=dropout) for m, d in self.in_dims.items()}
        )
        if weighting == "fixed":
            weights = dict(weights or {})
            if set(weights) != set(self.modalities):
                raise ValueError(f"weights must name exactly {list(self.modalities)}, got {sorted(weights)}")
            w = torch.tensor([float(weights[m]) for m in self.modalities])
            if (w < 0).any() or not (w > 0).any() or not torch.isfinite(w).all():
                raise ValueError(f"fixed weights must be finite, non-negative and not all zero, got {dict(weights)}")
            self.register_buffer("log_weights", torch.log(w / w.sum()).clamp_min(torch.finfo(w.dtype).min))
        elif weighting == "learned":
            self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        else:
            gate_in = sum(self.in_dims.values()) + len(self.modalities)
            self.gate = MLP(gate_in, [gate_hidden_dim], len(self.modalities))
        self.empty = nn.Parameter(torch.zeros(out_dim))

    def modality_weights(self, features: dict[str, Tensor], present: dict[str, Tensor] | None) -> Tensor:
        """Per-sample weights over the block's modalities, summing to 1 over those present (0 if none).

        Expects ``prepare``d inputs (``present=None``: everything present).
        """
        mask = stack_masks(present, self.modalities)
        first = features[self.modalities[0]]
        shape = (first.shape[0], len(self.modalities))
        if self.weighting == "fixed":
            scores = self.log_weights.expand(shape)
        elif self.weighting == "learned":
            scores = self.weight_logits.expand(shape)
        else:
            flags = presence_flags(mask, first, len(self.modalities))
            scores = self.gate(torch.cat([features[m] for m in self.modalities] + [flags], dim=-1))
        return masked_softmax(scores, mask, dim=-1)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        weights = self.modality_weights(features, present)
        outputs = torch.stack([self.heads[m](features[m]) for m in self.modalities], dim=1)
        mask = stack_masks(present, self.modalities)
        # "anything present" comes from the mask, not the weights (NaN weights stay NaN)
        if self.combine == "logits":
            fused = (weights.unsqueeze(-1) * outputs).sum(dim=1)  # einsum("bm,bmo->bo"): same, its backward 5x slower
            return unless_empty(fused, mask, self.empty)
        # log sum_m w_m softmax(z_m): a logsumexp of finite terms, so neither value nor gradient is NaN.
        log_w = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
        if mask is not None:
            log_w = torch.where(mask, log_w, torch.finfo(outputs.dtype).min)
        fused = torch.logsumexp(rearrange(log_w, "b m -> b m 1") + F.log_softmax(outputs, dim=-1), dim=1)
        return unless_empty(fused, mask, F.log_softmax(self.empty, dim=-1))
