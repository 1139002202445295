"""Encoder-owned preprocessing: raw samples (strings, waveforms, decoded images) -> one batch input.

Legend: ``b`` batch, ``l`` tokens, ``t`` samples, ``c h w`` channels height width.

A preprocessor is a small picklable object (no weights) that an encoder declares as
``encoder.preprocessor``; ``encoder.preprocess(raws)`` calls it. The training loop hands it to the
data loader, so it runs in the data workers at collation (:func:`fusionzoo.data.collate.collate`
with ``preprocess=``), never inside the training step; ``eval``, ``--resume``, ``from_pretrained``
and ``embed`` build the same encoder and so the same preprocessing.

Each ``__call__`` takes a list of the raw samples of the present rows and returns a tensor
``[b, ...]`` or a dict of tensors ``[b, ...]`` (token ids with their attention mask).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchaudio.functional as AF
from torch import Tensor

__all__ = ["TextPreprocessor", "AudioPreprocessor", "ImagePreprocessor", "PerImage", "as_image", "as_waveform"]


def _kind(x: object) -> str:
    return f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


class TextPreprocessor:
    """Strings -> ``{input_ids, attention_mask, ...}`` with a Hugging Face tokenizer, padded to the
    longest. A text longer than ``max_length`` tokens raises unless ``truncation`` is on; then it is
    cut, and the first cut is reported with a warning (``truncated`` counts them all).

    Shapes: ``list[str]`` (b) -> ``{k: long [b, l]}``.
    """

    def __init__(self, tokenizer: Any, *, max_length: int, truncation: bool, keys: Sequence[str], modality: str = "text") -> None:
        self.tokenizer, self.max_length, self.truncation = tokenizer, int(max_length), bool(truncation)
        self.keys, self.modality = tuple(keys), modality
        self.truncated = 0

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(
                    f"{self.modality}: sample {i} is {_kind(t)}, expected a string (the encoder tokenizes raw text itself; "
                    "a dataset that tokenized it already feeds a word-level encoder)"
                )
        if not texts:
            raise ValueError(f"{self.modality}: no texts to preprocess")
        out = self.tokenizer(texts, padding=True, return_tensors="pt", verbose=False)  # no truncation: the true lengths
        lengths = out["attention_mask"].sum(1).tolist()
        too_long = [i for i, n in enumerate(lengths) if n > self.max_length]
        if too_long and not self.truncation:
            i = too_long[0]
            raise ValueError(
                f"{self.modality}: sample {i} has {lengths[i]} tokens, more than max_length={self.max_length} "
                f"({len(too_long)} of {len(texts)} in this batch); set truncation: true to cut them, or shorten the texts"
            )
        if too_long:
            if self.truncated == 0:
                warnings.warn(f"{self.modality}: texts longer than {self.max_length} tokens are cut (truncation: true)", stacklevel=2)
            self.truncated += len(too_long)
            out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: out[k] for k in self.keys if k in out}


def as_waveform(x: object, i: int, modality: str) -> Tensor:
    """A float ``[t]`` waveform from a 1-D tensor, ``[1, t]`` tensor or 1-D numpy array."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{modality}: sample {i} is {_kind(x)}, expected a float waveform [t]") from None
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1 or not x.is_floating_point() or x.shape[0] == 0:
        raise ValueError(f"{modality}: sample {i} is {_kind(x)}, expected a non-empty float waveform [t] (mono)")
    return x.float()


class AudioPreprocessor:
    """Waveforms at ``sample_rate`` -> the model's input at its own rate: resampled (torchaudio)
    when the rates differ and ``resample`` is on, else an error, then the model's feature extractor
    (normalisation, padding). ``attention_mask`` (samples) is always returned; the encoder decides
    whether the model reads it. A clip shorter than ``min_samples`` (the model's receptive field)
    raises.

    Shapes: ``list[float [t]]`` (b) -> ``{input_values float [b, t_max], attention_mask long [b, t_max]}``
    (or the extractor's ``input_features``).
    """

    def __init__(
        self, extractor: Any, *, sample_rate: int | None, model_rate: int, resample: bool, min_samples: int = 1, modality: str = "audio",
    ) -> None:
        self.extractor, self.sample_rate, self.model_rate = extractor, sample_rate, int(model_rate)
        self.resample, self.min_samples, self.modality = bool(resample), int(min_samples), modality

    def __call__(self, waves: Sequence[object], sample_rate: int | None = None) -> dict[str, Tensor]:
        rate = sample_rate or self.sample_rate or self.model_rate
        if rate != self.model_rate and not self.resample:
            raise ValueError(f"{self.modality}: the audio is at {rate} Hz, the model reads {self.model_rate} Hz (resample: false)")
        clips = []
        for i, w in enumerate(waves):
            w = as_waveform(w, i, self.modality)
            if rate != self.model_rate:
                w = AF.resample(w, rate, self.model_rate)
            if w.shape[0] < self.min_samples:
                raise ValueError(
                    f"{self.modality}: sample {i} has {w.shape[0]} samples at {self.model_rate} Hz, fewer than the model's "
                    f"receptive field ({self.min_samples})"
                )
            clips.append(w.numpy())
        if not clips:
            raise ValueError(f"{self.modality}: no waveforms to preprocess")
        out = self.extractor(clips, sampling_rate=self.model_rate, padding=True, return_attention_mask=True, return_tensors="pt")
        return {k: v for k, v in out.items()}


def as_image(x: object, i: int, channels: int, modality: str) -> Tensor:
    """A float ``[c, h, w]`` image in [0, 1]: uint8 is divided by 255, one channel is repeated
    when the model reads three (grey to RGB); any other channel mismatch raises."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise TypeError(f"{modality}: sample {i} is {_kind(x)}, expected a decoded image [c, h, w] (uint8, or float in [0, 1])")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif not x.is_floating_point():
        raise TypeError(f"{modality}: sample {i} is {_kind(x)}, expected uint8 or float pixels")
    if x.shape[0] != channels:
        if x.shape[0] == 1 and channels == 3:
            x = x.expand(3, -1, -1)
        else:
            raise ValueError(f"{modality}: sample {i} has {x.shape[0]} channels, the model reads {channels}")
    return x.float()


class PerImage:
    """A one-image torchvision transform (timm's, OpenCLIP's: they run on tensors as on PIL images)
    applied image by image, the results stacked."""

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: list[Tensor]) -> Tensor:
        return torch.stack([self.transform(x) for x in images])


class ImagePreprocessor:
    """Decoded images of any size -> the model's ``[b, c, h, w]`` input through ``transform`` (the
    backbone's resize, crop and mean/std: timm's data config or the Hugging Face image processor).
    Images smaller than the model's input are resized up, like every other.

    Shapes: ``list[[c, h, w]]`` (b) -> ``float [b, c, H, W]``.
    """

    def __init__(self, transform: Callable[[list[Tensor]], Tensor], *, channels: int, modality: str = "visual") -> None:
        self.transform, self.channels, self.modality = transform, int(channels), modality

    def __call__(self, images: Sequence[object]) -> Tensor:
        images = [as_image(x, i, self.channels, self.modality) for i, x in enumerate(images)]
        if not images:
            raise ValueError(f"{self.modality}: no images to preprocess")
        return self.transform(images)
