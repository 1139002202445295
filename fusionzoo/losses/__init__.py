"""Losses for cross-modal learning; importing this package registers them in ``LOSSES``."""

from fusionzoo.losses import contrastive, distillation, multitask
from fusionzoo.losses.contrastive import (
    InfoNCELoss,
    TripletLoss,
    gather_with_local_grad,
)
from fusionzoo.losses.distillation import DistillationLoss
from fusionzoo.losses.multitask import MultiTaskLoss

__all__ = [
    "DistillationLoss",
    "InfoNCELoss",
    "MultiTaskLoss",
    "TripletLoss",
    "contrastive",
    "distillation",
    "gather_with_local_grad",
    "multitask",
]
