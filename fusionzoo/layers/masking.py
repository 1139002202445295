"""Presence masks: the one place missing modalities and padding are turned into arithmetic.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features.

Everything here uses ``torch.where`` rather than multiplication by the mask: ``0 * nan`` is ``nan``,
and the contract is that values in a missing slot (random, NaN, inf) never reach the output.

A mask of ``None`` means "everything present" (the fusion blocks' fast path): each function then
skips the masking and returns what an all-true mask gives, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "zero_missing", "fill_missing", "mask_of", "stack_masks", "presence_flags", "masked_mean", "masked_max", "masked_softmax",
    "any_present", "unless_empty",
]


def zero_missing(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` with every slot where ``mask`` is False set to 0.

    Shapes: x ``[b, ..., d]``, mask ``[b, ...]`` (x's shape without its last dim).
    """
    return x if mask is None else torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))


def fill_missing(x: Tensor, mask: Tensor | None, fill: Tensor) -> Tensor:
    """``x`` with every slot where ``mask`` is False replaced by ``fill`` (``[d]``, e.g. a learned embedding).

    Shapes: x ``[b, ..., d]``, mask ``[b, ...]``.
    """
    return x if mask is None else torch.where(mask.unsqueeze(-1), x, fill)


def mask_of(present: dict[str, Tensor] | None, modality: str) -> Tensor | None:
    """``present[modality]``, or None (everything present) when ``present`` is None."""
    return None if present is None else present[modality]


def stack_masks(present: dict[str, Tensor] | None, modalities: tuple[str, ...] | list[str]) -> Tensor | None:
    """``bool [b, m]``: the masks of ``modalities`` side by side (None stays None)."""
    return None if present is None else torch.stack([present[m] for m in modalities], dim=1)


def presence_flags(mask: Tensor | None, like: Tensor, num: int) -> Tensor:
    """``[b, num]`` presence flags in ``like``'s dtype (1 present, 0 missing) for a scorer to read;
    all ones for ``mask=None``."""
    return like.new_ones(like.shape[0], num) if mask is None else mask.to(like.dtype)


def unless_empty(x: Tensor, mask: Tensor | None, empty: Tensor) -> Tensor:
    """``x [b, d]``, with ``empty [d]`` for the samples whose ``mask [b, m]`` row has nothing present."""
    return x if mask is None else torch.where(mask.any(dim=1, keepdim=True), x, empty)


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


def masked_max(x: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Max of ``x`` over ``dim`` among slots where ``mask`` is True; 0 where none is.

    Shapes: x ``[..., n, d]``, mask ``[..., n]``.
    """
    if mask is None:
        return x.amax(dim=_feature_dim(dim))
    neg = torch.finfo(x.dtype).min
    filled = torch.where(mask.unsqueeze(-1), x, x.new_full((), neg))
    out = filled.amax(dim=_feature_dim(dim))
    return torch.where(any_present(mask, dim).unsqueeze(-1), out, out.new_zeros(()))


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``; all-zero weights where nothing is present.

    Shapes: scores and mask the same shape.
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    neg = torch.finfo(scores.dtype).min
    scores = torch.where(mask, scores, scores.new_full((), neg))
    weights = torch.softmax(scores, dim=dim)
    return torch.where(mask, weights, weights.new_zeros(()))


def any_present(mask: Tensor, dim: int) -> Tensor:
    return mask.any(dim=dim)


def _feature_dim(dim: int) -> int:
    # x has one more (trailing) dim than the mask: a negative mask dim shifts by one in x.
    return dim if dim >= 0 else dim - 1
