"""Evaluating one trained run under every subset of modalities and growing noise."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fusionzoo.atomic import pyplot, save_figure_atomic, write_text_atomic
from fusionzoo.config import build_dataset, num_classes_of
from fusionzoo.data.loader import make_loader
from fusionzoo.training.checkpoint import load_run, resolve_checkpoint
from fusionzoo.training.evaluate import NOISE_LEVELS, evaluate, subsets

__all__ = ["evaluate_run"]


def evaluate_run(
    path: str | Path,
    missing: Iterable[str] = (),
    noise: Mapping[str, float] | None = None,
    levels: Iterable[float] = NOISE_LEVELS,
    out_dir: str | Path | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy of a trained model with every subset of its modalities (minus ``missing``, with
    ``noise`` added), and robustness curves: accuracy as noise grows on each modality alone.
    Writes ``eval/results.json`` and ``eval/robustness.png`` (when matplotlib is installed)."""
    run_dir, _ = resolve_checkpoint(path)
    model, cfg, checkpoint = load_run(path)
    if cfg.kind == "align":
        raise ValueError(f"{run_dir} is an alignment run: its retrieval and zero-shot results are in metrics.json")
    test_set = build_dataset(cfg, "test")
    classes = num_classes_of(test_set)
    loader = make_loader(test_set, batch_size)
    missing = set(missing)
    for m in list(missing) + list(noise or {}):
        if m not in model.modalities:
            raise ValueError(f"unknown modality {m!r}: the model has {list(model.modalities)}")
    available = [m for m in model.modalities if m not in missing]
    rows = []
    for subset in subsets(available):
        metrics = evaluate(model, loader, classes, keep=subset, noise=noise)
        rows.append({"modalities": list(subset), **metrics})
    curves = {m: [{"level": level, **evaluate(model, loader, classes, noise={m: level})} for level in levels] for m in model.modalities}
    result = {"checkpoint": str(checkpoint), "missing": sorted(missing), "noise": dict(noise or {}), "subsets": rows, "robustness": curves}
    out = Path(out_dir) if out_dir is not None else run_dir / "eval"
    write_text_atomic(out / "results.json", json.dumps(result, indent=2))
    _plot_curves(curves, out / "robustness.png")
    return result


def _plot_curves(curves: Mapping[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, points in curves.items():
        ax.plot([p["level"] for p in points], [p["accuracy"] for p in points], marker="o", label=f"noise on {m}")
    ax.set_xlabel("noise level (x input std; token replacement prob.)"), ax.set_ylabel("test accuracy"), ax.legend()
    save_figure_atomic(fig, path)
