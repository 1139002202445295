"""The project's own exceptions; a leaf module that imports nothing of ours."""

from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError", "RunFolderError", "TrainingDiverged"]


class ConfigError(ValueError):
    """A config that cannot be built; the message starts with the file and the key's path."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted or cannot be written; names the file."""


class RunFolderError(RuntimeError):
    """A run folder that cannot be written: held by another process, or not a fusionzoo run folder."""


class TrainingDiverged(RuntimeError):
    """A non-finite training loss under ``train.on_nonfinite: stop``; names the epoch and step."""
