"""Classification losses chosen by ``train.loss``: cross-entropy and focal loss.

Legend: ``b`` batch, ``k`` classes.

Both take logits and integer labels and average over the *labelled* samples: a label of -1 marks an
unlabelled sample (semi-supervised data, or a modality that is missing for an auxiliary head), which
contributes nothing; a batch with no labelled sample gives 0 (and a zero gradient), never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionzoo.layers.validation import check_tensor
from fusionzoo.registry import LOSSES

__all__ = ["CrossEntropyLoss", "FocalLoss", "labelled_mean"]


def labelled_mean(per_sample: Tensor, labels: Tensor) -> Tensor:
    """Mean of ``per_sample`` over the samples whose label is not -1 (0 when there are none)."""
    keep = labels >= 0
    return torch.where(keep, per_sample, 0.0).sum() / keep.sum().clamp(min=1)


def _check(logits: Tensor, labels: Tensor, where: str) -> None:
    check_tensor(logits, name=f"{where} logits", shape=("B", "K"), what="logits")
    check_tensor(labels, name=f"{where} labels", shape=(logits.shape[0],), dtype="int", what="labels")


@LOSSES.register("cross_entropy", tags=("classification",))
class CrossEntropyLoss(nn.Module):
    """Cross-entropy with optional label smoothing, averaged over labelled samples (label -1 = none).

    Shapes: logits ``[b, k]``, labels ``long [b]`` -> scalar.
    """

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check(logits, labels, "cross_entropy")
        per = F.cross_entropy(logits.float(), labels.clamp(min=0), label_smoothing=self.label_smoothing, reduction="none")
        return labelled_mean(per, labels)

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        return torch.randn(batch_size, 5), torch.randint(0, 5, (batch_size,))


@LOSSES.register("focal", paper="https://arxiv.org/abs/1708.02002", tags=("classification",))
class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): ``-alpha_y (1 - p_y)^gamma log p_y``, which down-weights
    easy samples; ``gamma=0`` and no ``alpha`` is cross-entropy. ``alpha`` is one weight per class.

    Shapes: logits ``[b, k]``, labels ``long [b]`` -> scalar.
    """

    def __init__(self, *, gamma: float = 2.0, alpha: list[float] | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal: gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("alpha", None if alpha is None else torch.tensor([float(a) for a in alpha]), persistent=False)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check(logits, labels, "focal")
        if self.alpha is not None and self.alpha.numel() != logits.shape[1]:
            raise ValueError(f"focal: alpha has {self.alpha.numel()} class weights, the logits have {logits.shape[1]} classes")
        target = labels.clamp(min=0)
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
        per = -((1 - log_p.exp()).clamp(min=0) ** self.gamma) * log_p
        if self.alpha is not None:
            per = per * self.alpha[target]
        return labelled_mean(per, labels)

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        return torch.randn(batch_size, 5), torch.randint(0, 5, (batch_size,))
