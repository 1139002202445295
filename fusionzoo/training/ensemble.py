"""Result fusion of separately trained runs: the weighted average of their predictions.

``fusionzoo ensemble RUN_A RUN_B [--weights 0.7,0.3 | --fit-weights val] [--combine probs|logits]``
(or :func:`ensemble_runs`) evaluates, on the data of the first run's config (every run's modalities
must be in it), the weighted average of the runs' class probabilities (``probs``, the default) or
logits, under every subset of the modalities, on ``val`` and ``test``. Each run sees only its own
modalities, read through its own preprocessing (a tokenizer, an image processor) and fitted state
(vocabulary, label list); runs that name their classes in another order are aligned by name (other
classes are refused), and runs whose data disagree on a sample's label are refused. A run that sees none of a sample's modalities (not in the subset, or missing in that
sample) has no say for that sample: the weights of the others are renormalised, so an image model
and a speech model fall back to one another per sample, as late fusion does.

Weights are fixed (``weights``; default equal) or fitted on validation: a grid over the simplex
(steps of 1/20 for up to three runs, 1/10 beyond) maximising validation accuracy, ties broken by
validation loss; ``test`` is never looked at to choose them. Writes ``ensemble.json``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fusionzoo.atomic import write_json_atomic
from fusionzoo.config import ExperimentConfig, build_dataset
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.training.checkpoint import load_data_state, load_run, resolve_checkpoint
from fusionzoo.training.evaluate import keep_modalities, move_batch, subsets
from fusionzoo.training.runfolder import claim_output
from fusionzoo.training.tasks import get_task

__all__ = ["ensemble_runs", "combine_predictions", "fit_weights"]


def combine_predictions(logits: Sequence[Tensor | None], available: Sequence[Tensor], weights: Sequence[float], combine: str = "probs") -> Tensor:
    """Per-sample weighted average of the runs' probabilities (returned as log-probabilities) or
    logits; runs unavailable for a sample (``available[r]`` False, or ``logits[r]`` None) are left
    out of its average, and a sample no run sees gets uniform probabilities (zero logits)."""
    if combine not in ("probs", "logits"):
        raise ValueError(f"ensemble: combine must be 'probs' or 'logits', got {combine!r}")
    ref = next(x for x in logits if x is not None)
    total = torch.zeros_like(ref, dtype=torch.float64)
    mass = torch.zeros(ref.shape[0], dtype=torch.float64)
    for x, ok, w in zip(logits, available, weights):
        if x is None or w == 0:
            continue
        part = F.softmax(x.double(), dim=1) if combine == "probs" else x.double()
        wk = w * ok.double()
        total += wk[:, None] * part
        mass += wk
    seen = mass > 0
    out = torch.where(seen[:, None], total / mass.clamp(min=1e-12)[:, None], 1.0 / ref.shape[1] if combine == "probs" else 0.0)
    return out.clamp(min=1e-12).log() if combine == "probs" else out


def _grid(runs: int) -> list[tuple[float, ...]]:
    steps = 20 if runs <= 3 else 10
    return [tuple(c / steps for c in combo) for combo in itertools.product(range(steps + 1), repeat=runs) if sum(combo) == steps]


def fit_weights(logits: Sequence[Tensor | None], available: Sequence[Tensor], labels: Tensor, combine: str = "probs") -> tuple[float, ...]:
    """The weights on the simplex grid with the best accuracy on these (validation) predictions,
    ties broken by loss, then by closeness to equal weights."""
    task = get_task("multiclass")
    best, best_key = None, None
    n = len(logits)
    for w in _grid(n):
        m = task.metrics(combine_predictions(logits, available, w, combine), labels)
        key = (m["accuracy"], -m["loss"], -sum((x - 1 / n) ** 2 for x in w))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best


@torch.no_grad()
def _predictions(
    models: Sequence, loaders: Sequence, keep: set[str], orders: Sequence[_ClassOrder | None]
) -> tuple[list[Tensor | None], list[Tensor], Tensor]:
    """Each run's logits on its own loader (the same samples in the same order, each through that
    run's preprocessing and fitted state), its columns in the first run's class order, which
    modalities it saw per sample, and the labels (as the first run numbers the classes)."""
    outputs: list[list[Tensor] | None] = [[] if keep & set(m.modalities) else None for m in models]
    available: list[list[Tensor]] = [[] for _ in models]
    labels = []
    device = next(models[0].parameters()).device
    for batches in zip(*loaders, strict=True):
        batches = [keep_modalities(move_batch(b, device), keep) for b in batches]
        label = batches[0]["label"]
        for order, b in zip(orders[1:], batches[1:]):
            mine = b["label"] if order is None else torch.where(b["label"] >= 0, order.inverse.to(b["label"].device)[b["label"].clamp(min=0)], -1)
            if not torch.equal(mine, label):
                raise ValueError("ensemble: the runs' data give different labels for the same samples (another label column or data file?)")
        n = label.shape[0]
        for r, (model, batch) in enumerate(zip(models, batches)):
            present = batch["present"]
            seen = [m for m in model.modalities if m in keep and m in present]
            if not seen:
                available[r].append(torch.zeros(n, dtype=torch.bool))
                continue
            logits = model(batch).float().cpu()
            outputs[r].append(logits if orders[r] is None else logits[:, orders[r].columns])
            ok = torch.zeros(n, dtype=torch.bool)
            for m in seen:
                ok |= present[m].cpu()
            available[r].append(ok)
        labels.append(label.cpu())
    return [None if o is None else torch.cat(o) for o in outputs], [torch.cat(a) for a in available], torch.cat(labels)


def _class_orders(loaders: Sequence, runs: Sequence) -> list[_ClassOrder | None]:
    """Per run, how it numbers the first run's classes when both name them (``dataset.classes``) in
    another order; None where the numbers agree (or the data names no classes: labels must agree)."""
    first = getattr(loaders[0].dataset, "classes", None)
    orders: list[_ClassOrder | None] = [None]
    for loader, run in zip(loaders[1:], runs[1:]):
        mine = getattr(loader.dataset, "classes", None)
        orders.append(_ClassOrder(first, mine, run) if first is not None and mine is not None and list(first) != list(mine) else None)
    return orders


class _ClassOrder:
    """How a run numbers the first run's classes: ``columns[k]`` is its output for the first run's
    class ``k``; ``inverse[j]`` the first run's number of its class ``j``."""

    def __init__(self, first: Sequence[str], mine: Sequence[str], run: Any) -> None:
        if sorted(map(str, first)) != sorted(map(str, mine)) or len(set(map(str, mine))) != len(mine):
            extra, lacking = sorted(set(map(str, mine)) - set(map(str, first))), sorted(set(map(str, first)) - set(map(str, mine)))
            raise ValueError(f"ensemble: {run} predicts other classes than the first run (its own: {extra}, lacking: {lacking}); "
                             "an ensemble averages the same classes")
        index = {str(c): j for j, c in enumerate(mine)}
        self.columns = torch.tensor([index[str(c)] for c in first])
        self.inverse = torch.argsort(self.columns)


def _loaders(loaded: Sequence, data: Any, split: str, batch_size: int) -> list:
    """One loader per run over ``split`` of the first run's ``data`` section, built with that run's
    config (its encoders' raw modalities) and fitted state (vocabulary, label list)."""
    loaders = []
    for model, cfg, checkpoint in loaded:
        run_dir, _ = resolve_checkpoint(checkpoint)
        run_cfg = ExperimentConfig(raw={**cfg.to_dict(), "data": data}, origin=cfg.origin, train=cfg.train)
        dataset = build_dataset(run_cfg, split, load_data_state(run_dir))
        loaders.append(make_loader(dataset, batch_size, preprocess=preprocessors(model.encoders)))
    if len({len(loader.dataset) for loader in loaders}) > 1:
        raise ValueError(f"ensemble: the runs' {split} splits differ in size ({[len(x.dataset) for x in loaders]}): another data state")
    return loaders


def ensemble_runs(
    runs: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    combine: str = "probs",
    fit: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate the weighted-average ensemble of ``runs`` (see the module docstring); writes
    ``ensemble.json`` to ``out`` (default: ``<first run>/ensemble``) and returns its content."""
    if len(runs) < 2:
        raise ValueError("ensemble: give at least two runs")
    if weights is not None and fit is not None:
        raise ValueError("ensemble: give weights or fit them on validation, not both")
    if fit not in (None, "val"):
        raise ValueError(f"ensemble: weights are fitted on 'val' only (never on test), got {fit!r}")
    run_dir, _ = resolve_checkpoint(runs[0])
    out = claim_output(Path(out) if out is not None else run_dir / "ensemble", ("ensemble.json",), "ensemble")
    loaded = [load_run(r) for r in runs]
    models = [m for m, _, _ in loaded]
    for (model, cfg, _), run in zip(loaded, runs):
        if cfg.kind != "model":
            raise ValueError(f"ensemble: {run} is not a classifier run")
    classes = {m.out_dim for m in models}
    if len(classes) != 1:
        raise ValueError(f"ensemble: the runs predict different numbers of classes: {[m.out_dim for m in models]}")
    if weights is None:
        weights = [1.0 / len(runs)] * len(runs)
    if len(weights) != len(runs) or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"ensemble: one weight >= 0 per run ({len(runs)}), not all 0; got {list(weights)}")
    union = sorted({m for model in models for m in model.modalities})
    loaders = {s: _loaders(loaded, loaded[0][1].data, s, batch_size) for s in ("val", "test")}
    first = loaders["test"][0].dataset
    if get_task(first).name != "multiclass":
        raise ValueError("ensemble: multi-class runs only")
    lacking = [m for m in union if m not in getattr(first, "modalities", union)]
    if lacking:
        raise ValueError(f"ensemble: the data of {runs[0]} has no {lacking[0]!r}, which a run reads; put the run with every modality first")
    task = get_task("multiclass")
    orders = _class_orders(loaders["test"], runs)
    if fit == "val":
        weights = list(fit_weights(*_predictions(models, loaders["val"], set(union), orders), combine))
    weights = [float(w) / sum(weights) for w in weights]
    result: dict[str, Any] = {"runs": [str(r) for r in runs], "weights": weights, "fitted_on": fit, "combine": combine, "modalities": union}
    for split, loader in loaders.items():
        rows = []
        for subset in subsets(union):
            logits, available, labels = _predictions(models, loader, set(subset), orders)
            row = {"modalities": list(subset), **task.metrics(combine_predictions(logits, available, weights, combine), labels)}
            row["runs"] = [None if x is None else task.metrics(x, labels)["accuracy"] for x in logits]
            rows.append(row)
        result[split] = rows
    write_json_atomic(out / "ensemble.json", result)
    return result
