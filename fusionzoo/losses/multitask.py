"""Combining several losses: fixed weights, learned uncertainty weighting, dynamic weight averaging.

Legend: ``t`` tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fusionzoo.registry import LOSSES

__all__ = ["MultiTaskLoss"]

WEIGHTINGS = ("fixed", "uncertainty", "dwa")


@LOSSES.register(
    "multitask",
    example_kwargs={"tasks": ("fused", "audio")},
    paper="https://arxiv.org/abs/1705.07115",
    tags=("multi-task",),
)
class MultiTaskLoss(nn.Module):
    """``sum_t w_t L_t`` over named task losses.

    * ``fixed``: the given ``weights`` (default 1 each);
    * ``uncertainty`` (Kendall et al. 2018): ``sum_t exp(-s_t) L_t + s_t`` with a learned
      ``s_t = log sigma_t^2`` per task, so noisier tasks are down-weighted;
    * ``dwa`` (Liu et al. 2019, dynamic weight averaging): ``w_t = T * softmax(r_t / temperature)``
      with ``r_t`` the ratio of task ``t``'s last two epoch losses; call :meth:`end_epoch` with the
      epoch's mean losses. That history is part of ``state_dict()``, so a resumed run continues it.

    :meth:`weights` gives the current effective weights, for logging.
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str],
        weighting: str = "uncertainty",
        weights: Mapping[str, float] | None = None,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"multitask: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if len(set(tasks)) != len(tasks) or not tasks:
            raise ValueError(f"multitask: tasks must be distinct names, got {list(tasks)}")
        self.tasks, self.weighting, self.temperature = tuple(tasks), weighting, temperature
        fixed = weights or {t: 1.0 for t in self.tasks}
        if set(fixed) != set(self.tasks):
            raise ValueError(f"multitask: weights must name exactly {list(self.tasks)}, got {sorted(fixed)}")
        self.register_buffer("fixed", torch.tensor([float(fixed[t]) for t in self.tasks]))
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=weighting == "uncertainty")
        self.history: list[Tensor] = []

    def get_extra_state(self) -> dict[str, Tensor]:
        # The DWA loss history is state a resume needs: it travels in state_dict().
        history = torch.stack(self.history) if self.history else torch.zeros(0, len(self.tasks))
        return {"history": history}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.history = [row.clone() for row in state["history"]]

    def weights(self) -> dict[str, float]:
        if self.weighting == "uncertainty":
            w = torch.exp(-self.log_vars.detach())
        elif self.weighting == "dwa" and len(self.history) >= 2:
            ratio = self.history[-1] / self.history[-2].clamp(min=1e-12)
            w = len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)
        else:
            w = self.fixed
        return {t: float(v) for t, v in zip(self.tasks, w)}

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Record an epoch's mean task losses (used by ``dwa``)."""
        self.history.append(torch.tensor([float(mean_losses[t]) for t in self.tasks]))

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        missing = [t for t in self.tasks if t not in losses]
        if missing or len(losses) != len(self.tasks):
            raise ValueError(f"multitask: expected losses for {list(self.tasks)}, got {sorted(losses)}")
        stacked = torch.stack([losses[t] for t in self.tasks])
        if self.weighting == "uncertainty":
            return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()
        w = torch.tensor(list(self.weights().values()), device=stacked.device, dtype=stacked.dtype)
        return (w * stacked).sum()

    def example_input(self, batch_size: int = 4) -> tuple[dict[str, Tensor]]:
        return ({t: torch.rand((), requires_grad=True) for t in self.tasks},)
