"""What a run folder or a saved model folder keeps of its encoders besides their config and weights.

An encoder that owns its preprocessing (``hf_text``'s tokenizer, ``hf_vision``'s image processor)
writes it, with the backbone's architecture, into ``<folder>/encoders/<modality>/`` through its
``save_preprocessing``; ``<folder>/encoders.yaml`` records the constructor arguments that point the
encoder there (``{text: {model: encoders/text, tokenizer: encoders/text}}``; paths relative to the
folder, after a library's schema such as ``local-dir:``) or that keep it from downloading (``{visual: {pretrained: false}}``). ``eval``, ``--resume``,
``embed`` and ``from_pretrained`` rebuild the encoders with those arguments, so training and
inference tokenize, resample and resize alike even when the hub's copy or the original folder has
changed or gone. The config itself stays as the user wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from fusionzoo.atomic import atomic_folder, write_text_atomic

__all__ = ["ENCODER_DIR", "OVERRIDES_FILE", "save_encoders", "load_encoder_overrides"]

ENCODER_DIR = "encoders"
OVERRIDES_FILE = "encoders.yaml"


def save_encoders(encoders: Mapping[str, nn.Module], folder: str | Path) -> dict[str, dict[str, Any]]:
    """Write each encoder's preprocessing into ``folder`` and ``encoders.yaml``; returns the overrides
    (nothing is written for encoders rebuilt from their config alone)."""
    folder = Path(folder)
    overrides: dict[str, dict[str, Any]] = {}
    for m in sorted(encoders):
        save = getattr(encoders[m], "save_preprocessing", None)
        if save is None:
            continue
        target = folder / ENCODER_DIR / m
        with atomic_folder(target) as tmp:
            args = save(tmp)
        relative = f"{ENCODER_DIR}/{m}"
        args = {k: v.replace(str(tmp), relative) if isinstance(v, str) else v for k, v in args.items()}
        if not any(target.iterdir()):
            target.rmdir()
        if args:
            overrides[m] = args
    if (folder / ENCODER_DIR).is_dir() and not any((folder / ENCODER_DIR).iterdir()):
        (folder / ENCODER_DIR).rmdir()
    if overrides:
        write_text_atomic(folder / OVERRIDES_FILE, yaml.safe_dump(overrides, sort_keys=True))
    else:
        (folder / OVERRIDES_FILE).unlink(missing_ok=True)  # an earlier save's, which no longer applies
    return overrides


def load_encoder_overrides(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The overrides ``save_encoders`` recorded in ``folder``, paths made absolute; ``{}`` without any."""
    folder = Path(folder)
    path = folder / OVERRIDES_FILE
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected {{modality: {{argument: value}}}}, got {type(data).__name__}")
    return {m: {k: _absolute(v, folder) for k, v in args.items()} for m, args in data.items()}


def _absolute(value: Any, folder: Path) -> Any:
    """``encoders/<m>`` (after a library's schema such as ``local-dir:``, if any) resolved in ``folder``."""
    if not isinstance(value, str):
        return value
    match = re.match(rf"^([a-z-]+:)?({ENCODER_DIR}/.*)$", value)
    return value if match is None else (match.group(1) or "") + str(folder / match.group(2))
