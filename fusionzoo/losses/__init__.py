"""Losses (classification, multi-label and regression, contrastive, distillation, multi-task); importing this package registers them in ``LOSSES``."""

from fusionzoo.losses import classification, contrastive, distillation, multitask, targets
from fusionzoo.losses.classification import CrossEntropyLoss, FocalLoss
from fusionzoo.losses.contrastive import (
    InfoNCELoss,
    TripletLoss,
    gather_with_local_grad,
)
from fusionzoo.losses.distillation import DistillationLoss
from fusionzoo.losses.multitask import MultiTaskLoss
from fusionzoo.losses.targets import BCELoss, RegressionLoss

__all__ = [
    "BCELoss",
    "RegressionLoss",
    "targets",
    "CrossEntropyLoss",
    "FocalLoss",
    "classification",
    "DistillationLoss",
    "InfoNCELoss",
    "MultiTaskLoss",
    "TripletLoss",
    "contrastive",
    "distillation",
    "gather_with_local_grad",
    "multitask",
]
