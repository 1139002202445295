"""Training objectives: what differs between tasks, in small classes the one training loop calls.

Legend: ``b`` batch, ``k`` classes, ``d`` features, ``s`` statistics.

An objective is an ``nn.Module`` (its own parameters, such as auxiliary heads, learned task weights
or a contrastive logit scale, train with the model and are saved in the checkpoint's state) with:

* ``forward(model, batch) -> (loss, stats)``: the batch's loss and a float64 vector of batch *sums*
  named by ``stat_names`` (kept on the device and summed over the epoch by the loop: no host sync
  per step);
* ``summarize(totals) -> dict``: the epoch's train metrics from the summed statistics (all ranks);
* ``end_epoch(train)``: epoch-level updates (dynamic weight averaging);
* ``evaluate(model, loaders, split, device) -> dict``: metrics on one split (``val`` every epoch,
  ``test`` once at the end); ``metric_names`` are those a run may select on (``train.select_metric``,
  ``default_metric`` unless given; a name ending in ``loss`` is minimised, any other maximised);
* ``headline(record) -> str``: one log line.

The loop wraps model and objective together (:class:`TrainStep`), so ``torch.compile`` and
``DistributedDataParallel`` see one module and every trained parameter is synchronised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fusionzoo.config import ExperimentConfig, build_loss
from fusionzoo.layers.masking import masked_mean
from fusionzoo.losses.distillation import DistillationLoss
from fusionzoo.losses.multitask import MultiTaskLoss
from fusionzoo.registry import LOSSES
from fusionzoo.training.checkpoint import load_run
from fusionzoo.training.evaluate import evaluate
from fusionzoo.training.retrieval import embed, retrieval_metrics, zero_shot_accuracy
from fusionzoo.training.tasks import Task, get_task

__all__ = ["Objective", "Classification", "Distillation", "AuxiliaryHeads", "Alignment", "TrainStep", "build_objective"]


class Objective(nn.Module):
    """Base class; see the module docstring."""

    stat_names: tuple[str, ...] = ("loss_sum", "samples")
    metric_names: tuple[str, ...] = ("accuracy", "macro_f1", "loss")
    default_metric: str = "accuracy"
    needs_train_split: bool = False  # evaluation also reads the (unshuffled) training split
    drop_last: bool = False

    def summarize(self, totals: Tensor) -> dict[str, Any]:
        stats = dict(zip(self.stat_names, totals.tolist()))
        return {"loss": stats["loss_sum"] / max(stats["samples"], 1.0)}

    def end_epoch(self, train: Mapping[str, Any]) -> None:
        """Called once per epoch with the summarized train metrics."""

    def learned_nothing(self, totals: Tensor) -> str | None:
        """Why an epoch with these training statistics had nothing to learn from; None when it had."""
        return None

    def headline(self, record: Mapping[str, Any]) -> str:
        return f"train loss {record['train']['loss']:.4f}"


class Classification(Objective):
    """A supervised loss from ``LOSSES`` (``train.loss``) for the data's task (:mod:`~fusionzoo.training.tasks`:
    multi-class, multi-label or regression), on the labelled samples."""

    def __init__(self, criterion: nn.Module, num_classes: int, task: Task | str = "multiclass") -> None:
        super().__init__()
        self.criterion, self.num_classes, self.task = criterion, num_classes, get_task(task)
        self.stat_names = ("loss_sum", *self.task.stat_names, "samples")
        self.metric_names, self.default_metric = self.task.metric_names, self.task.default_metric

    def _stats(self, loss: Tensor, logits: Tensor, labels: Tensor, *extra: Tensor) -> Tensor:
        task_stats = self.task.stats(logits, labels)
        n = task_stats[0]
        return torch.stack([loss.detach() * n, *task_stats, n.new_tensor(labels.shape[0]), *extra]).double()

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        logits = model(batch)
        loss = self.criterion(logits, batch["label"])
        return loss, self._stats(loss, logits, batch["label"])

    def summarize(self, totals: Tensor) -> dict[str, Any]:
        stats = dict(zip(self.stat_names, totals.tolist()))
        return {"loss": stats["loss_sum"] / max(stats["labelled"], 1.0), **self.task.summarize(stats)}

    def learned_nothing(self, totals: Tensor) -> str | None:
        labelled = totals[self.stat_names.index("labelled")].item()
        return None if labelled else "no training sample has a label (each is missing, -1 or NaN): the loss had nothing to learn from"

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loaders: Mapping[str, Any], split: str, device: torch.device, predictions: dict | None = None
    ) -> dict[str, Any]:
        return evaluate(model, loaders[split], self.task, device, predictions=predictions)

    def headline(self, record: Mapping[str, Any]) -> str:
        train, val = record["train"], record["val"]
        shown = [m for m in self.metric_names if m != "loss"][:2]
        return f"train loss {train['loss']:.4f}  val loss {val['loss']:.4f} " + " ".join(f"{m} {val[m]:.3f}" for m in shown)


class Distillation(Classification):
    """Classification plus soft targets from a trained teacher run (``train.distill``), mixed by
    :class:`~fusionzoo.losses.DistillationLoss`; the teacher may read other modalities. With
    ``beta > 0`` the student's fused features also regress the teacher's through a learned
    projection (trained with the model; saved with the objective's state)."""

    def __init__(self, teacher: nn.Module, num_classes: int, temperature: float, alpha: float, beta: float = 0.0, student_dim: int | None = None) -> None:
        super().__init__(nn.Identity(), num_classes)
        self.stat_names = self.stat_names + ("batches", "hard", "soft", "feature")
        for p in teacher.parameters():
            p.requires_grad_(False)
        # A tuple keeps the teacher out of this module's parameters and state: it is loaded from its run.
        self._teacher = (teacher.eval(),)
        dims = {"student_dim": student_dim, "teacher_dim": teacher.fusion.out_dim} if beta > 0 else {}
        self.distill = DistillationLoss(temperature=temperature, alpha=alpha, beta=beta, **dims)

    @staticmethod
    def _outputs(model: nn.Module, batch: dict, features: bool) -> tuple[Tensor, Tensor | None]:
        if not features:
            return model(batch), None
        fused = model.fuse(*model.encode(batch))
        return model.head(fused), fused

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        want = self.distill.beta > 0
        logits, fused = self._outputs(model, batch, want)
        with torch.no_grad():
            teacher, teacher_fused = self._outputs(self._teacher[0], batch, want)
        terms = self.distill.terms(
            logits.float(), teacher.float(), batch["label"],
            None if fused is None else fused.float(), None if teacher_fused is None else teacher_fused.float(),
        )
        loss = self.distill.combine(terms)
        zero = loss.new_zeros(())
        extra = (loss.new_ones(()), terms.get("hard", zero).detach(), terms["soft"].detach(), terms.get("feature", zero).detach())
        return loss, self._stats(loss, logits, batch["label"], *extra)

    def learned_nothing(self, totals: Tensor) -> str | None:
        return None  # the teacher's soft targets teach every sample, labelled or not

    def summarize(self, totals: Tensor) -> dict[str, Any]:
        stats = dict(zip(self.stat_names, totals.tolist()))
        batches = max(stats["batches"], 1.0)
        out = {**super().summarize(totals), "hard_loss": stats["hard"] / batches, "soft_loss": stats["soft"] / batches}
        return out | ({"feature_loss": stats["feature"] / batches} if self.distill.beta > 0 else {})


class AuxiliaryHeads(Classification):
    """Classification plus one linear classifier per modality on its encoder's features, the fused and
    per-modality losses combined by :class:`~fusionzoo.losses.MultiTaskLoss` (``train.aux_heads``).
    A modality's head learns only from the samples that have it."""

    def __init__(self, criterion: nn.Module, num_classes: int, encoder_dims: Mapping[str, int], **multitask: Any) -> None:
        super().__init__(criterion, num_classes)
        self.modalities = tuple(sorted(encoder_dims))
        self.aux = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in sorted(encoder_dims.items())})
        self.multitask = MultiTaskLoss(tasks=["fused", *self.modalities], **multitask)
        self.stat_names = self.stat_names + ("batches", *(f"{t}_loss" for t in self.multitask.tasks))

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        labels = batch["label"]
        features, present = model.encode(batch)
        logits = model.head(model.fuse(features, present))
        losses = {"fused": self.criterion(logits, labels)}
        for m in self.modalities:
            if m not in features:
                losses[m] = logits.new_zeros(())
                continue
            f, p = features[m], present.get(m)
            if f.dim() == 3:  # tokens: pool the present ones
                mask = p if p is not None else torch.ones(f.shape[:2], dtype=torch.bool, device=f.device)
                f, p = masked_mean(f, mask, dim=1), mask.any(dim=1)
            losses[m] = self.criterion(self.aux[m](f), labels if p is None else labels.masked_fill(~p, -1))
        loss = self.multitask(losses)
        task_losses = [losses[t].detach() for t in self.multitask.tasks]
        return loss, self._stats(loss, logits, labels, loss.new_ones(()), *task_losses)

    def summarize(self, totals: Tensor) -> dict[str, Any]:
        stats = dict(zip(self.stat_names, totals.tolist()))
        batches = max(stats["batches"], 1.0)
        tasks = {f"{t}_loss": stats[f"{t}_loss"] / batches for t in self.multitask.tasks}
        return {**super().summarize(totals), **tasks, "task_weights": self.multitask.weights()}

    def end_epoch(self, train: Mapping[str, Any]) -> None:
        self.multitask.end_epoch({t: train[f"{t}_loss"] for t in self.multitask.tasks})
        train["task_weights"] = self.multitask.weights()


class Alignment(Objective):
    """Two modalities into one embedding space with a contrastive loss (``align.loss``: ``info_nce``
    or ``triplet``). Evaluates retrieval both ways on the evaluated split (``mean_R@1`` is the mean of
    the two directions' R@1) and zero-shot classification of the first modality through the class
    means of the second on the training split."""

    default_metric = "mean_R@1"
    needs_train_split = True
    drop_last = True  # a contrastive batch of one has no negatives

    def __init__(self, loss: nn.Module, order: tuple[str, ...], num_classes: int) -> None:
        super().__init__()
        self.loss, self.order, self.num_classes = loss, order[:2], num_classes
        self.metric_names = ("mean_R@1", f"zero_shot_{self.order[0]}_accuracy")

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        emb = model(batch)
        loss = self.loss(emb[self.order[0]], emb[self.order[1]])
        n = batch["label"].shape[0]
        return loss, torch.stack([loss.detach() * n, loss.new_tensor(n)]).double()

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loaders: Mapping[str, Any], split: str, device: torch.device, predictions: dict | None = None
    ) -> dict[str, Any]:
        first, second = self.order  # (retrieval keeps no per-sample predictions)
        emb, labels = embed(model, loaders[split], device)
        train, train_labels = embed(model, loaders["train"], device)
        metrics = retrieval_metrics(emb[first], emb[second], names=(first, second), labels=labels)
        metrics["mean_R@1"] = (metrics[f"{first}->{second} R@1"] + metrics[f"{second}->{first} R@1"]) / 2
        metrics[f"zero_shot_{first}_accuracy"] = zero_shot_accuracy(emb[first], labels, train[second], train_labels, self.num_classes)
        if hasattr(self.loss, "logit_scale"):
            metrics["temperature"] = float(1 / self.loss.logit_scale.detach().exp())
        return metrics

    def headline(self, record: Mapping[str, Any]) -> str:
        a, b = self.order
        t = record["val"]
        return (
            f"train loss {record['train']['loss']:.4f}  {a}->{b} R@1 {t[f'{a}->{b} R@1']:.3f} R@5 {t[f'{a}->{b} R@5']:.3f}"
            f"  {b}->{a} R@1 {t[f'{b}->{a} R@1']:.3f}  zero-shot {t[f'zero_shot_{a}_accuracy']:.3f}"
        )


class TrainStep(nn.Module):
    """Model and objective (and an optional weight regulariser, ``regularizer(model) -> scalar``, added
    to the loss: L2-SP) as one module: ``forward(batch) -> (loss, stats)``. This is what the loop
    compiles and wraps in ``DistributedDataParallel``."""

    def __init__(self, model: nn.Module, objective: Objective, regularizer: nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.objective, self.regularizer = model, objective, regularizer

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        loss, stats = self.objective(self.model, batch)
        if self.regularizer is not None:
            loss = loss + self.regularizer(self.model)
        return loss, stats


def build_objective(
    cfg: ExperimentConfig, model: nn.Module, num_classes: int, device: torch.device, task: Task | str = "multiclass"
) -> Objective:
    """The objective a config asks for (alignment, distillation, auxiliary heads or plain
    supervised training for the data's ``task``), on ``device``."""
    return _objective(cfg, model, num_classes, device, get_task(task)).to(device)


def _objective(cfg: ExperimentConfig, model: nn.Module, num_classes: int, device: torch.device, task: Task) -> Objective:
    settings = cfg.train
    if task.name != "multiclass":
        for key, given in (("align", cfg.kind == "align"), ("train.distill", settings.distill is not None), ("train.aux_heads", settings.aux_heads is not None)):
            if given:
                raise cfg.error(key, f"needs multi-class labels; the data's task is {task.name}")
    loss = build_loss(cfg, task.default_loss) if cfg.kind != "align" else None
    if loss is not None and task.loss_tag not in LOSSES.get((cfg.train.loss or {"name": task.default_loss})["name"]).tags:
        name = cfg.train.loss["name"]
        raise cfg.error("train.loss.name", f"{name!r} is not a {task.name} loss; choose one of {LOSSES.list(tag=task.loss_tag)}")
    if cfg.kind == "align":
        return Alignment(build_loss(cfg), model.order, num_classes)
    if settings.distill is not None:
        teacher = load_run(settings.distill["teacher"])[0].to(device)
        if teacher.out_dim != num_classes:
            raise cfg.error("train.distill.teacher", f"it predicts {teacher.out_dim} classes, the data has {num_classes}")
        d = settings.distill
        if float(d.get("beta", 0.0)) > 0 and not (hasattr(model, "fusion") and hasattr(teacher, "fusion")):
            raise cfg.error("train.distill.beta", "the feature term needs a fused student and teacher (model: configs)")
        return Distillation(
            teacher, num_classes, float(d.get("temperature", 4.0)), float(d.get("alpha", 0.5)), float(d.get("beta", 0.0)),
            student_dim=model.fusion.out_dim,
        )
    if settings.aux_heads is not None:
        aux = settings.aux_heads
        dims = {m: enc.out_dim for m, enc in model.encoders.items()}
        return AuxiliaryHeads(
            loss, num_classes, dims,
            weighting=aux.get("weighting", "uncertainty"), weights=aux.get("weights"), temperature=aux.get("temperature", 2.0),
        )
    return Classification(loss, num_classes, task)
