"""Training: the loop, checkpoints, evaluation under missing modalities and noise."""

from fusionzoo.training.alignment import train_alignment
from fusionzoo.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fusionzoo.training.engine import build_datasets, train
from fusionzoo.training.evaluate import classification_metrics, evaluate, subsets
from fusionzoo.training.robustness import evaluate_run
from fusionzoo.training.settings import TrainSettings

__all__ = [
    "TrainSettings",
    "build_datasets",
    "classification_metrics",
    "evaluate",
    "evaluate_run",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "subsets",
    "train",
    "train_alignment",
]
