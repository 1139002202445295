"""Checkpoints and run loading: model weights as safetensors, the rest with ``torch.save``; written
atomically.

A checkpoint is a folder ``checkpoints/epoch-NNN/`` holding ``model.safetensors`` and ``state.pt``
(optimizer, scheduler, epoch, history). It is written into a temporary folder, fsynced and renamed,
then ``checkpoints/last`` (the folder's name) is replaced atomically, so a crash leaves either the
old or the new checkpoint, never half of one. ``checkpoints/best`` names the epoch that is best on
the validation split; pruning keeps it. ``state.pt`` is read with ``weights_only=True``.

A run's *selected* checkpoint is ``best`` or ``last`` as its config's ``train.select`` says: the
one its test metrics were computed on, and the one ``fusionzoo eval``, ``init_from`` and a
distillation teacher load.

:func:`load_run` rebuilds a run's model from its ``config.yaml`` and loads a checkpoint into it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from fusionzoo.atomic import write_text_atomic
from fusionzoo.config import ExperimentConfig, build_model, load_config

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "selected_checkpoint",
    "load_model_weights",
    "resolve_checkpoint",
    "load_run",
    "load_run_config",
]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any], keep: int = 2, best: bool = False) -> Path:
    """Write ``checkpoints/epoch-{epoch:03d}`` and point ``checkpoints/last`` (and ``best`` when
    ``best``) at it; keep the newest ``keep`` and the best."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:03d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / "last", name + "\n")
    if best:
        write_text_atomic(root / "best", name + "\n")
    kept = _pointed(root, "best")
    for old in sorted(p for p in root.glob("epoch-*") if p.is_dir())[:-keep]:
        if old != kept:
            shutil.rmtree(old)
    return final


def _pointed(root: Path, pointer: str) -> Path | None:
    path = root / pointer
    return root / path.read_text().strip() if path.is_file() else None


def latest_checkpoint(run_dir: Path, pointer: str = "last") -> Path | None:
    """The checkpoint ``checkpoints/<pointer>`` names (``last`` or ``best``), or None without one."""
    path = _pointed(Path(run_dir) / "checkpoints", pointer)
    if path is None:
        return None
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"checkpoint {path} named by {path.parent / pointer} is missing or incomplete")
    return path


def selected_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run selected: ``best`` when its config says ``train.select: best`` (the
    default) and a best exists, else ``last``."""
    config = Path(run_dir) / "config.yaml"
    select = "best"
    if config.is_file():
        select = (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("select", "best")
    return (latest_checkpoint(run_dir, "best") if select == "best" else None) or latest_checkpoint(run_dir)


def load_model_weights(model: nn.Module, checkpoint: Path) -> None:
    model.load_state_dict(load_file(str(Path(checkpoint) / "model.safetensors")))


def load_checkpoint(checkpoint: Path, model: nn.Module) -> dict[str, Any]:
    """Load the weights into ``model`` and return the rest of the state."""
    load_model_weights(model, checkpoint)
    return torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint_dir)`` from a run directory (its selected checkpoint) or a checkpoint
    folder inside one."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path.parent.parent, path
    checkpoint = selected_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{path} is neither a run directory with checkpoints nor a checkpoint folder")
    return path, checkpoint


def load_run_config(run_dir: str | Path) -> ExperimentConfig:
    """The resolved config a run folder was trained with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not a fusionzoo run folder")
    cfg = load_config(yaml.safe_load(path.read_text()))
    return ExperimentConfig(raw=cfg.raw, origin=str(path), train=cfg.train)


def load_run(path: str | Path) -> tuple[nn.Module, ExperimentConfig, Path]:
    """``(model in eval mode with the checkpoint's weights, the run's config, the checkpoint folder)``
    from a run directory (its selected checkpoint) or a checkpoint folder."""
    run_dir, checkpoint = resolve_checkpoint(path)
    cfg = load_run_config(run_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    load_model_weights(model, checkpoint)
    return model.eval(), cfg, checkpoint
