"""Everything a resume needs, in one object that the checkpoint saves and restores whole.

Determinism: the global RNGs (torch's, and numpy's and Python's, which libraries draw from: the
time masks of Hugging Face speech models come from numpy) are reseeded from ``(seed, epoch, rank)``
at the start of every epoch
(:func:`epoch_seed`) and the data order is a function of ``(seed, epoch)`` (a streaming dataset's too:
:mod:`fusionzoo.data.stream`), so a run resumed from
the checkpoint of epoch ``e`` continues exactly as the uninterrupted run would (bitwise on the CPU).
The loader's generator state is saved too, and checked against that rule on restore.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

__all__ = ["TrainState", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The global RNG seed of ``epoch`` (0-based) on ``rank``: dropout, augmentation, modality dropout."""
    return seed + 1_000_003 * (epoch + 1) + 7919 * rank


@dataclass
class TrainState:
    """Model, optimizer, scheduler, objective (its modules, learned task weights and loss history),
    the epoch reached, the metrics history, the seed, the training loader's order and, with
    ``train.ema``, the moving average of the weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: nn.Module
    loader: DataLoader
    seed: int
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The moving average of the weights (``train.ema``), or None.
    ema: AveragedModel | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated, checkpointed and tested: the average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def step_done(self) -> None:
        """After an optimizer step: the average takes the new weights in."""
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def begin_epoch(self, epoch: int, rank: int) -> None:
        """Reseed the global RNGs and fix the data order of ``epoch``."""
        seed = epoch_seed(self.seed, epoch, rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        else:
            self.loader.generator.manual_seed(self.seed + epoch)
        if hasattr(self.loader.dataset, "set_epoch"):  # a stream: its shard order and shuffle buffer
            self.loader.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """What ``state.pt`` holds (the model's weights go to ``model.safetensors``)."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict(),
            "loader_generator": self.loader.generator.get_state(),
        } | ({} if self.ema is None else {  # the checkpoint's model.safetensors holds the average
            "trained_weights": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "ema_updates": self.ema.n_averaged.detach().cpu().clone(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"the checkpoint was trained with seed {state['seed']}, the config says {self.seed}")
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.generator.set_state(state["loader_generator"])
        if (self.ema is None) != ("trained_weights" not in state):
            raise ValueError("the checkpoint was trained " + ("without" if self.ema is not None else "with") + " train.ema, the config says otherwise")
        if self.ema is not None:
            self.model.load_state_dict(state["trained_weights"])
            self.ema.n_averaged.copy_(state["ema_updates"])
        self.history, self.epoch = list(state["history"]), int(state["epoch"])
