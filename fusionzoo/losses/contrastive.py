"""Contrastive losses between two modalities' embeddings: CLIP-style InfoNCE and VSE++ triplet.

Legend: ``b`` batch, ``d`` embedding width, ``w`` processes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fusionzoo.layers.validation import check_tensor
from fusionzoo.registry import LOSSES

__all__ = ["InfoNCELoss", "TripletLoss", "gather_with_local_grad"]


def _check_pair(a: Tensor, b: Tensor, where: str) -> None:
    check_tensor(a, name=f"{where} a", shape=("B", "D"), what="embeddings")
    check_tensor(b, name=f"{where} b", shape=("B", "D"), what="embeddings")
    if a.shape != b.shape:
        raise ValueError(f"{where}: paired embeddings must have the same shape, got a {list(a.shape)} and b {list(b.shape)}")


def gather_with_local_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along the batch; this rank's slice is ``x`` itself, so the
    gradient flows to the local part (the other slices are constants here, and their owners compute
    the same full loss and so their own gradients). Identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


@LOSSES.register("info_nce", example_kwargs={}, paper="https://arxiv.org/abs/2103.00020", tags=("contrastive", "cross-modal"))
class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP): cross-entropy of the scaled cosine similarities, a -> b and b -> a.

    The logit scale is learned, initialised to ``ln(1/0.07)`` and clamped at ``ln(100)`` as CLIP does.
    Across processes every rank gathers all embeddings (:func:`gather_with_local_grad`) and computes
    the full ``[W*b, W*b]`` loss, so each rank's embeddings get exactly the single-process gradient
    of the concatenated batch. ``positive_mask`` (``bool [B, B]`` over the gathered batch) marks
    extra positives (duplicates, or two samples of the same class): they are left out of each
    other's negatives.

    Shapes: a, b ``[b, d]`` -> scalar.
    """

    def __init__(self, *, init_temperature: float = 0.07, max_logit_scale: float = 100.0, learn_temperature: bool = True) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learn_temperature)
        self.max_log = math.log(max_logit_scale)

    def logits(self, a: Tensor, b: Tensor) -> Tensor:
        scale = self.logit_scale.clamp(max=self.max_log).exp()
        return scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    def forward(self, a: Tensor, b: Tensor, positive_mask: Tensor | None = None) -> Tensor:
        _check_pair(a, b, "info_nce")
        if not torch.isfinite(self.logit_scale.detach()):
            raise FloatingPointError(f"info_nce: the logit scale became non-finite ({self.logit_scale.item()})")
        a, b = gather_with_local_grad(a), gather_with_local_grad(b)
        logits = self.logits(a, b)
        if positive_mask is None:
            target = torch.arange(logits.shape[0], device=logits.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        check_tensor(positive_mask, name="info_nce positive_mask", shape=tuple(logits.shape), dtype=torch.bool, what="mask")
        target = torch.arange(logits.shape[0], device=logits.device)
        # Other positives are not negatives: drop them from the softmax, keep each row's own pair.
        drop = positive_mask & ~torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(drop, torch.finfo(logits.dtype).min)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        return torch.randn(batch_size, 8), torch.randn(batch_size, 8)


@LOSSES.register("triplet", example_kwargs={}, paper="https://arxiv.org/abs/1707.05612", tags=("contrastive", "cross-modal"))
class TripletLoss(nn.Module):
    """Bidirectional hinge loss on cosine similarities with in-batch negatives: the hardest negative
    per anchor (VSE++, ``hardest=True``) or the sum over all negatives (the plain margin form).

    Shapes: a, b ``[b, d]`` -> scalar.
    """

    def __init__(self, *, margin: float = 0.2, hardest: bool = True) -> None:
        super().__init__()
        self.margin, self.hardest = margin, hardest

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        _check_pair(a, b, "triplet")
        sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
        pos = sim.diag()
        off = ~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        cost_ab = ((self.margin + sim - pos[:, None]).clamp(min=0)) * off  # a anchors, b negatives
        cost_ba = ((self.margin + sim - pos[None, :]).clamp(min=0)) * off  # b anchors, a negatives
        if self.hardest:
            return (cost_ab.amax(dim=1) + cost_ba.amax(dim=0)).mean()
        return (cost_ab.sum(dim=1) + cost_ba.sum(dim=0)).mean()

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        return torch.randn(batch_size, 8), torch.randn(batch_size, 8)
