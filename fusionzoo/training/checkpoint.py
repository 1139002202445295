"""Checkpoints and run loading: model weights as safetensors, the rest with ``torch.save``; written
atomically and verified on load.

A checkpoint is a folder ``checkpoints/epoch-NNN/`` holding ``model.safetensors``, ``state.pt``
(optimizer, scheduler, epoch, history) and ``manifest.json`` (the SHA-256 of both). It is written
into a temporary folder, fsynced and renamed, then ``checkpoints/last`` (the folder's name) is
replaced atomically, so a crash leaves either the old or the new checkpoint, never half of one.
``checkpoints/best`` names the epoch that is best on the validation split; pruning keeps it and
only ever removes epochs older than the one just written. ``state.pt`` is read with
``weights_only=True``.

Every load checks the manifest first: a changed, truncated or missing file raises
:class:`CheckpointError` naming it (a checkpoint written before manifests existed loads
unverified). ``--resume`` (:func:`resume_checkpoint`) falls back to the newest intact checkpoint,
saying which ones it passed over, also when the ``last`` pointer is missing.

A run's *selected* checkpoint is ``best`` or ``last`` as its config's ``train.select`` says: the
one its test metrics were computed on, and the one ``fusionzoo eval``, ``init_from`` and a
distillation teacher load.

:func:`load_run` rebuilds a run's model from its ``config.yaml`` and loads a checkpoint into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fusionzoo.atomic import write_text_atomic
from fusionzoo.config import ExperimentConfig, build_model, load_config
from fusionzoo.errors import CheckpointError
from fusionzoo.encoders.text import attach_vocabularies
from fusionzoo.models.saved_encoders import load_encoder_overrides
from fusionzoo.vocab import vocabularies_of

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "selected_checkpoint",
    "resume_checkpoint",
    "verify_checkpoint",
    "load_model_weights",
    "resolve_checkpoint",
    "load_run",
    "load_run_config",
    "load_data_state",
    "DATA_STATE",
]

MANIFEST = "manifest.json"
DATA_STATE = "data_state.json"
FILES = ("model.safetensors", "state.pt")
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _epochs(root: Path) -> list[tuple[int, Path]]:
    """``(epoch, folder)`` of every checkpoint folder, oldest first."""
    found = [(int(m.group(1)), p) for p in root.glob("epoch-*") if p.is_dir() and (m := EPOCH_DIR.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any], keep: int = 2, best: bool = False) -> Path:
    """Write ``checkpoints/epoch-{epoch:03d}`` with its manifest and point ``checkpoints/last`` (and
    ``best`` when ``best``) at it; keep the newest ``keep`` up to this epoch and the best. An error
    while writing (a full disk) names the folder and leaves nothing behind."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".epoch-*"):  # a killed writer's temporary folder (a run folder has one writer)
        shutil.rmtree(stale, ignore_errors=True)
    name = f"epoch-{epoch:03d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / FILES[0]))
        torch.save(state, tmp / FILES[1])
        manifest = {"epoch": epoch, "sha256": {f: _sha256(tmp / f) for f in FILES}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {root / name} ({e.strerror or e}); is the disk full?") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / "last", name + "\n")
    if best:
        write_text_atomic(root / "best", name + "\n")
    kept = _pointed(root, "best")
    older = [p for e, p in _epochs(root) if e <= epoch]
    for old in older[:-keep]:
        if old != kept:
            shutil.rmtree(old)
    return final


def _pointed(root: Path, pointer: str) -> Path | None:
    path = root / pointer
    return root / path.read_text().strip() if path.is_file() else None


def verify_checkpoint(checkpoint: str | Path) -> None:
    """Check a checkpoint folder against its manifest; raise :class:`CheckpointError` naming the file
    that is missing or changed."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / FILES[0]).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} is missing or incomplete: no {FILES[0]}")
    manifest = checkpoint / MANIFEST
    if not manifest.is_file():
        return  # written before manifests existed
    try:
        expected = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest} is unreadable: {e}") from None
    for name, digest in expected.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {manifest})")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path} is corrupted: its SHA-256 differs from the one in {manifest}")


def latest_checkpoint(run_dir: Path, pointer: str = "last") -> Path | None:
    """The checkpoint ``checkpoints/<pointer>`` names (``last`` or ``best``), or None without one."""
    path = _pointed(Path(run_dir) / "checkpoints", pointer)
    if path is None:
        return None
    if not (path / FILES[0]).is_file():
        raise CheckpointError(f"checkpoint {path} named by {path.parent / pointer} is missing or incomplete")
    return path


def resume_checkpoint(run_dir: Path, exclude: tuple[Path, ...] = ()) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint to resume from: the one ``last`` names, else the newest epoch
    folder that verifies (but those in ``exclude``: ones that failed to load); and a line for each
    checkpoint passed over."""
    root = Path(run_dir) / "checkpoints"
    candidates = [p for _, p in reversed(_epochs(root)) if p not in exclude] if root.is_dir() else []
    last = _pointed(root, "last")
    if last is not None and last in candidates:
        candidates.remove(last)
        candidates.insert(0, last)
    skipped = []
    if root.is_dir() and last is None and candidates:
        skipped.append(f"{root / 'last'} is missing; looking for the newest intact checkpoint")
    for path in candidates:
        try:
            verify_checkpoint(path)
            return path, skipped
        except CheckpointError as e:
            skipped.append(f"skipping {path}: {e}")
    return None, skipped


def selected_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run selected: ``best`` when its config says ``train.select: best`` (the
    default) and a best exists, else ``last``."""
    config = Path(run_dir) / "config.yaml"
    select = "best"
    if config.is_file():
        select = (yaml.safe_load(config.read_text()) or {}).get("train", {}).get("select", "best")
    return (latest_checkpoint(run_dir, "best") if select == "best" else None) or latest_checkpoint(run_dir)


def load_model_weights(model: nn.Module, checkpoint: Path) -> None:
    """Verify the checkpoint, then load its weights into ``model``."""
    verify_checkpoint(checkpoint)
    path = Path(checkpoint) / FILES[0]
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    model.load_state_dict(weights)


def load_checkpoint(checkpoint: Path, model: nn.Module) -> dict[str, Any]:
    """Load the weights into ``model`` and return the rest of the state (read with the safe loader:
    a state holding anything but tensors and plain containers is a :class:`CheckpointError`)."""
    load_model_weights(model, checkpoint)
    path = Path(checkpoint) / FILES[1]
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path} does not load with the safe loader (weights_only): {str(e).splitlines()[0]}") from None


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


def load_data_state(run_dir: str | Path) -> dict | None:
    """What the run's dataset fitted on its training split (vocabulary, label list), or None."""
    path = Path(run_dir) / DATA_STATE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the run's data state is damaged") from None


def load_run(path: str | Path) -> tuple[nn.Module, ExperimentConfig, Path]:
    """``(model in eval mode with the checkpoint's weights, the run's config, the checkpoint folder)``
    from a run directory (its selected checkpoint) or a checkpoint folder."""
    run_dir, checkpoint = resolve_checkpoint(path)
    cfg = load_run_config(run_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, load_encoder_overrides(run_dir))
    load_model_weights(model, checkpoint)
    attach_vocabularies(model.encoders, vocabularies_of(load_data_state(run_dir)))
    return model.eval(), cfg, checkpoint
