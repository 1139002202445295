"""Evaluating one trained run under every subset of modalities and growing noise."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from fusionzoo.atomic import pyplot, save_figure_atomic, write_text_atomic
from fusionzoo.config import build_model, load_config
from fusionzoo.data.loader import make_loader
from fusionzoo.training.checkpoint import latest_checkpoint, load_model_weights
from fusionzoo.training.engine import build_datasets, num_classes_of
from fusionzoo.training.evaluate import NOISE_LEVELS, evaluate, subsets

__all__ = ["evaluate_run", "resolve_checkpoint", "load_run"]


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint_dir)`` from a run directory or a checkpoint folder inside one."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path.parent.parent, path
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{path} is neither a run directory with checkpoints nor a checkpoint folder")
    return path, checkpoint


def load_run(path: str | Path) -> torch.nn.Module:
    """The trained model of a run directory (or checkpoint folder), in eval mode."""
    return _load(path)[2]


def _load(path: str | Path) -> tuple[Path, dict[str, Any], torch.nn.Module]:
    """``(checkpoint, resolved config, model with its weights, in eval mode)`` of a classification run."""
    run_dir, checkpoint = resolve_checkpoint(path)
    cfg = load_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if "align" in cfg:
        raise ValueError(f"{run_dir} is an alignment run: its retrieval and zero-shot results are in metrics.json")
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = build_model(cfg)
    load_model_weights(model, checkpoint)
    return checkpoint, cfg, model.eval()


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
    checkpoint, cfg, model = _load(path)
    _, test_set = build_datasets(cfg)
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
