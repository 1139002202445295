"""Presence masks: the one place missing modalities and padding are turned into arithmetic.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features.

Everything here uses ``torch.where`` rather than multiplication by the mask: ``0 * nan`` is ``nan``,
and the contract is that values in a missing slot (random, NaN, inf) never reach the output.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["zero_missing", "masked_mean", "masked_max", "masked_softmax", "any_present"]


def zero_missing(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with every slot where ``mask`` is False set to 0.

    Shapes: x ``[b, ..., d]``, mask ``[b, ...]`` (x's shape without its last dim).
    """
    return torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))


def masked_mean(x: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only slots where ``mask`` is True; 0 where none is.
    ``mask=None`` (every slot present) gives the same values as an all-true mask, bit for bit.

    Shapes: x ``[..., n, d]``, mask ``[..., n]``; ``dim`` indexes ``n`` in the mask.
    """
    if mask is None:
        return x.sum(dim=_feature_dim(dim)) / x.shape[_feature_dim(dim)]
    x = zero_missing(x, mask)
    count = mask.sum(dim=dim).clamp(min=1).to(x.dtype).unsqueeze(-1)
    return x.sum(dim=_feature_dim(dim)) / count


def masked_max(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Max of ``x`` over ``dim`` among slots where ``mask`` is True; 0 where none is.

    Shapes: x ``[..., n, d]``, mask ``[..., n]``.
    """
    neg = torch.finfo(x.dtype).min
    filled = torch.where(mask.unsqueeze(-1), x, x.new_full((), neg))
    out = filled.amax(dim=_feature_dim(dim))
    return torch.where(any_present(mask, dim).unsqueeze(-1), out, out.new_zeros(()))


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``; all-zero weights where nothing is present.

    Shapes: scores and mask the same shape.
    """
    neg = torch.finfo(scores.dtype).min
    scores = torch.where(mask, scores, scores.new_full((), neg))
    weights = torch.softmax(scores, dim=dim)
    return torch.where(mask, weights, weights.new_zeros(()))


def any_present(mask: Tensor, dim: int) -> Tensor:
    return mask.any(dim=dim)


def _feature_dim(dim: int) -> int:
    # x has one more (trailing) dim than the mask: a negative mask dim shifts by one in x.
    return dim if dim >= 0 else dim - 1
