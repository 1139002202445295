"""The encoder contract: one modality in, ``[b, out_dim]`` pooled features out.

Legend: ``b`` batch, ``n`` tokens, ``d`` features.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = ["Encoder", "input_kwargs", "preprocessors", "takes_raw", "takes_lengths"]


class Encoder(nn.Module):
    """Base class of every modality encoder.

    Subclasses set ``self.modality`` and ``self.out_dim``, implement ``forward`` (pooled features)
    and ``example_input``, and implement ``forward_tokens`` where token-level features exist.

    Shapes: ``forward``: input -> ``[b, out_dim]``; ``forward_tokens``: input ->
    ``([b, n, out_dim], bool [b, n] or None)`` with False marking padding.
    """

    modality: str
    out_dim: int
    #: True for encoders that read raw samples through their own ``preprocessor`` (see :func:`takes_raw`).
    takes_raw: bool = False

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError(f"{type(self).__name__} ({self.modality}) has no token-level output")

    @property
    def has_tokens(self) -> bool:
        return type(self).forward_tokens is not Encoder.forward_tokens

    def save_preprocessing(self, folder: Path) -> dict[str, Any]:
        """Write what rebuilding this encoder needs besides its config and weights (a tokenizer, the
        backbone's architecture) into ``folder``; returns the constructor arguments that point at it
        (``{"model": folder, "tokenizer": folder}``) or that stop a download (``{"pretrained": False}``).
        The built-in encoders are rebuilt from their config alone: ``{}``."""
        return {}

    def example_input(self, batch_size: int = 2) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement example_input")


@cache
def takes_lengths(cls: type) -> bool:
    """Whether an encoder class's ``forward`` takes the valid ``lengths`` of a padded input."""
    return "lengths" in inspect.signature(cls.forward).parameters


def input_kwargs(encoder: nn.Module, batch: dict, modality: str) -> dict[str, Tensor]:
    """``{"lengths": batch["<modality>_lengths"]}`` for an encoder whose ``forward`` takes the valid
    lengths of a padded input (waveforms); ``{}`` otherwise. Collation pads every 1-D float input
    and records its lengths, also fixed-width feature vectors, which have nothing to mask."""
    key = f"{modality}_lengths"
    return {"lengths": batch[key]} if key in batch and takes_lengths(type(encoder)) else {}


def takes_raw(encoder: object) -> bool:
    """Whether an encoder (or encoder class) reads raw samples through its own ``preprocessor``
    (``hf_*``, ``timm``, ``open_clip``): the data then gives it strings, waveforms and decoded images."""
    return bool(getattr(encoder, "takes_raw", False))


def preprocessors(encoders: Mapping[str, nn.Module]) -> dict[str, Callable[[list], Any]]:
    """``{modality: encoder.preprocessor}`` for the encoders that own their preprocessing: what the
    data loader's collation runs (:func:`fusionzoo.data.loader.make_loader`'s ``preprocess``)."""
    return {m: enc.preprocessor for m, enc in encoders.items() if takes_raw(enc)}
