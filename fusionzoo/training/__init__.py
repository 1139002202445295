"""Training: the loop, its objectives and resumable state, selection on validation, checkpoints,
evaluation under missing modalities and noise."""

from fusionzoo.settings import TrainSettings
from fusionzoo.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_run,
    resolve_checkpoint,
    save_checkpoint,
    selected_checkpoint,
)
from fusionzoo.training.embed import embed_run
from fusionzoo.training.engine import train
from fusionzoo.training.ensemble import ensemble_runs
from fusionzoo.training.evaluate import evaluate, subsets
from fusionzoo.training.explain import explain, explain_run
from fusionzoo.training.objectives import (
    Alignment,
    AuxiliaryHeads,
    Classification,
    Distillation,
    Objective,
    build_objective,
)
from fusionzoo.training.robustness import evaluate_run
from fusionzoo.training.selection import Selection
from fusionzoo.training.state import TrainState
from fusionzoo.training.tasks import TASKS, Task, get_task

__all__ = [
    "Alignment",
    "AuxiliaryHeads",
    "Classification",
    "Distillation",
    "Objective",
    "TASKS",
    "Task",
    "TrainSettings",
    "TrainState",
    "build_objective",
    "embed_run",
    "ensemble_runs",
    "evaluate",
    "evaluate_run",
    "explain",
    "explain_run",
    "get_task",
    "latest_checkpoint",
    "load_checkpoint",
    "load_run",
    "resolve_checkpoint",
    "save_checkpoint",
    "selected_checkpoint",
    "Selection",
    "subsets",
    "train",
]
