"""Evaluating one trained run under every subset of modalities and growing noise.

MultiBench (Liang et al., 2021) summarises an accuracy-vs-noise curve by its *relative robustness*,
the area under it; here the area is divided by the range of noise levels, so it reads as the mean
accuracy over that range (levels need not be evenly spaced: trapezoid rule) and curves over other
level sets stay comparable. *Effective robustness* compares the drop from clean accuracy with a
reference method's (:mod:`fusionzoo.compare.leaderboard`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionzoo.atomic import pyplot, save_figure_atomic, write_json_atomic
from fusionzoo.bench.measure import count_flops
from fusionzoo.config import build_dataset
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.training.checkpoint import load_data_state, load_run, resolve_checkpoint
from fusionzoo.training.evaluate import NOISE_LEVELS, evaluate, move_batch, subsets
from fusionzoo.training.runfolder import claim_output
from fusionzoo.training.tasks import get_task

__all__ = ["evaluate_run", "relative_robustness", "condition_name"]


def relative_robustness(levels: Sequence[float], accuracies: Sequence[float]) -> float:
    """Area under accuracy vs noise level (trapezoid rule) divided by the level range."""
    if len(levels) != len(accuracies) or len(levels) < 2 or list(levels) != sorted(levels) or levels[0] == levels[-1]:
        raise ValueError(f"relative_robustness: need at least 2 increasing levels with one accuracy each, got {levels}, {accuracies}")
    area = sum((b - a) * (fa + fb) / 2 for a, b, fa, fb in zip(levels, levels[1:], accuracies, accuracies[1:]))
    return area / (levels[-1] - levels[0])


def evaluate_run(
    path: str | Path,
    missing: Iterable[str] = (),
    noise: Mapping[str, float] | None = None,
    levels: Iterable[float] = NOISE_LEVELS,
    out_dir: str | Path | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The task's metrics (accuracy for classes, mAP for labels, MAE for regression) of a trained
    model with every subset of its modalities (minus ``missing``, with ``noise`` added), and
    robustness curves: that metric as noise grows on each modality alone, each
    summarised by its relative robustness; with the model's parameter count and forward FLOPs per
    test sample. The condition (``missing``, ``noise``) holds everywhere, curves included: a curve
    adds its noise on top of the condition's, on the modalities still present. Writes
    ``results.json`` and ``robustness.png`` (with matplotlib) into ``eval/`` without a condition and
    into ``eval/<condition>/`` (e.g. ``eval/missing=audio,noise=visual:0.5/``) with one, so no
    evaluation overwrites another."""
    run_dir, _ = resolve_checkpoint(path)
    missing, levels = set(missing), sorted(_check_levels(levels))
    out = claim_output(Path(out_dir) if out_dir is not None else run_dir / "eval" / condition_name(missing, noise, levels),
                       ("results.json", "robustness.png"), "eval")
    model, cfg, checkpoint = load_run(path)
    if cfg.kind == "align":
        raise ValueError(f"{run_dir} is an alignment run: its retrieval and zero-shot results are in metrics.json")
    test_set = build_dataset(cfg, "test", load_data_state(run_dir))
    task = get_task(test_set)
    metric = task.default_metric
    loader = make_loader(test_set, batch_size, preprocess=preprocessors(model.encoders))
    for m in list(missing) + list(noise or {}):
        if m not in model.modalities:
            raise ValueError(f"unknown modality {m!r}: the model has {list(model.modalities)}")
    for m, level in (noise or {}).items():
        if not (math.isfinite(level) and level >= 0):
            raise ValueError(f"--noise {m}={level}: a noise level is a finite number >= 0 (a standard deviation)")
    available = [m for m in model.modalities if m not in missing]
    if not available:
        raise ValueError(f"--missing names every modality of the model ({sorted(missing)}): nothing is left to evaluate")
    rows = []
    for subset in subsets(available):
        metrics = evaluate(model, loader, task, keep=subset, noise=noise)
        rows.append({"modalities": list(subset), **metrics})
    curves = {
        m: [{"level": level, **evaluate(model, loader, task, keep=available, noise={**(noise or {}), m: (noise or {}).get(m, 0.0) + level})} for level in levels]
        for m in available
    }
    result = {
        "checkpoint": str(checkpoint),
        "task": task.name,
        "metric": metric,
        "missing": sorted(missing),
        "noise": dict(noise or {}),
        "subsets": rows,
        "robustness": curves,
        "relative_robustness": {m: relative_robustness(levels, [p[metric] for p in pts]) for m, pts in curves.items()} if len(levels) > 1 else {},
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_sample": _flops_per_sample(model, loader),
    }
    write_json_atomic(out / "results.json", result)
    _plot_curves(curves, metric, out / "robustness.png")
    return result


def _check_levels(levels: Iterable[float]) -> list[float]:
    levels = [float(v) for v in levels]
    if not levels or not all(math.isfinite(v) and v >= 0 for v in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"--levels: distinct finite noise levels >= 0 (standard deviations), got {levels}")
    return levels


def condition_name(missing: Iterable[str] = (), noise: Mapping[str, float] | None = None, levels: Iterable[float] = NOISE_LEVELS) -> str:
    """The folder of an evaluation condition under ``eval/``: ``""`` for none, else e.g.
    ``missing=audio,noise=visual:0.5`` or ``levels=0,1`` (noise levels other than the default make
    their own condition: ``compare`` reads the default one)."""
    parts = []
    if sorted(float(v) for v in levels) != sorted(NOISE_LEVELS):
        parts.append("levels=" + "+".join(f"{v:g}" for v in sorted(levels)))
    if missing:
        parts.append("missing=" + "+".join(sorted(missing)))
    if noise:
        parts.append("noise=" + "+".join(f"{m}:{v:g}" for m, v in sorted(noise.items())))
    return ",".join(parts)


def _flops_per_sample(model, loader) -> float:
    """Forward FLOPs (matmuls, convolutions, attention) on the first test batch, per sample."""
    batch = move_batch(next(iter(loader)), next(model.parameters()).device)
    # With autograd on: FlopCounterMode's module tracker hooks tensors that require grad, which
    # fails under no_grad for a parameter used directly as an activation (bottleneck's latents).
    flops = count_flops(lambda: model(batch))
    return flops / batch["label"].shape[0]


def _plot_curves(curves: Mapping[str, list[dict]], metric: str, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, points in curves.items():
        ax.plot([p["level"] for p in points], [p[metric] for p in points], marker="o", label=f"noise on {m}")
    ax.set_xlabel("noise level (x input std; token replacement prob.)"), ax.set_ylabel(f"test {metric}"), ax.legend()
    save_figure_atomic(fig, path)
