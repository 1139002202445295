"""Losses for multi-label and regression targets, chosen by ``train.loss`` like the classification ones.

Legend: ``b`` batch, ``k`` labels, ``t`` regression targets.

* ``bce``: binary cross-entropy on logits for multi-label targets (``float [b, k]`` of 0/1, one
  sigmoid per label), averaged over labels and samples; ``pos_weight`` up-weights positives.
* ``mse``, ``l1`` and ``huber``: regression on ``float [b]`` (one target, logits ``[b, 1]``) or
  ``[b, t]`` targets. A NaN target marks an unlabelled value, which contributes nothing; a batch
  without a labelled value gives 0, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionzoo.layers.validation import check_tensor
from fusionzoo.registry import LOSSES

__all__ = ["BCELoss", "RegressionLoss", "regression_pairs"]


@LOSSES.register("bce", tags=("multilabel",))
class BCELoss(nn.Module):
    """Binary cross-entropy with logits for multi-label targets.

    Shapes: logits ``[b, k]``, targets ``float [b, k]`` in ``{0, 1}`` -> scalar.
    """

    def __init__(self, *, pos_weight: list[float] | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor([float(w) for w in pos_weight]), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_tensor(logits, name="bce logits", shape=("B", "K"), what="logits")
        check_tensor(targets, name="bce targets", shape=tuple(logits.shape), dtype="float", what="multi-label targets")
        if self.pos_weight is not None and self.pos_weight.numel() != logits.shape[1]:
            raise ValueError(f"bce: pos_weight has {self.pos_weight.numel()} values, the logits have {logits.shape[1]} labels")
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        return torch.randn(batch_size, 5), torch.randint(0, 2, (batch_size, 5)).float()


def regression_pairs(outputs: Tensor, targets: Tensor, where: str = "regression") -> tuple[Tensor, Tensor]:
    """``(outputs, targets)`` as matching ``[b, t]`` float tensors: ``[b]`` targets pair with ``[b, 1]``
    outputs. Anything else raises naming the shapes (nothing is broadcast)."""
    if targets.dim() == 1:
        targets = targets[:, None]
    check_tensor(targets, name=f"{where} targets", shape=("B", "T"), dtype="float", what="regression targets")
    check_tensor(outputs, name=f"{where} outputs", shape=tuple(targets.shape), what="one output per target")
    return outputs.float(), targets.float()


class RegressionLoss(nn.Module):
    """A pointwise regression loss over the labelled (non-NaN) targets."""

    def __init__(self, kind: str, delta: float = 1.0) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"{kind}: delta must be positive, got {delta}")
        self.kind, self.delta = kind, delta

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        outputs, targets = regression_pairs(outputs, targets, self.kind)
        labelled = ~torch.isnan(targets)
        y = torch.where(labelled, targets, outputs.detach())
        if self.kind == "mse":
            per = F.mse_loss(outputs, y, reduction="none")
        elif self.kind == "l1":
            per = F.l1_loss(outputs, y, reduction="none")
        else:
            per = F.huber_loss(outputs, y, reduction="none", delta=self.delta)
        return torch.where(labelled, per, 0.0).sum() / labelled.sum().clamp(min=1)

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        return torch.randn(batch_size, 1), torch.randn(batch_size)


@LOSSES.register("mse", tags=("regression",))
def mse() -> RegressionLoss:
    """Mean squared error over labelled targets (NaN = unlabelled)."""
    return RegressionLoss("mse")


@LOSSES.register("l1", tags=("regression",))
def l1() -> RegressionLoss:
    """Mean absolute error over labelled targets (NaN = unlabelled); MMSA trains its sentiment regressions with it."""
    return RegressionLoss("l1")


@LOSSES.register("huber", tags=("regression",))
def huber(*, delta: float = 1.0) -> RegressionLoss:
    """Huber (smooth L1) loss with threshold ``delta`` over labelled targets (NaN = unlabelled)."""
    return RegressionLoss("huber", delta)
