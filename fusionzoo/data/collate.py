"""Collation: a list of per-sample dicts into one batch dict with padding and presence masks.

Legend: ``b`` batch, ``t`` samples, ``l`` tokens.

A sample is ``{modality: Tensor, ..., "label": int | Tensor}``; a modality the sample lacks is
absent (or ``None``). The batch follows DESIGN.md's contract:

* fixed-shape modalities (images) are stacked; a missing sample's slot is zeros;
* 1-D float modalities (waveforms) are right-padded with zeros to the longest, and
  ``batch["<m>_lengths"]`` holds the true lengths; a missing sample's slot is zeros of the padded
  length (a well-formed input for the encoder, whose output ``present`` hides);
* 1-D integer modalities (token ids) are right-padded with the padding id 0;
* :class:`Frames` samples (variable-length ``[..., t]``, e.g. cached spectrograms ``[1, f, t]``) are
  right-padded with zeros along their last dim, with ``batch["<m>_lengths"]``; a dataset opts in by
  wrapping them, so a plain N-D tensor of another shape (an image of another size) stays an error;
* a modality with a preprocessor (``preprocess={m: fn}``: the encoder's own, see
  :mod:`fusionzoo.encoders.preprocess`) gives its raw samples (strings, waveforms, images of any
  size) of the present rows to ``fn``, which returns a tensor ``[p, ...]`` or a dict of them (token
  ids and their mask); a missing row's slot is a copy of the first present row (a well-formed input,
  whose output ``present`` hides);
* ``batch["present"][m]`` is a bool ``[b]`` for every modality in the batch;
* ``batch["label"]`` is a ``long [b]`` for integer labels (classes), a ``float [b]`` for float
  labels (regression targets) and a stacked ``[b, ...]`` for tensor labels (multi-label targets).

Nothing is truncated, and shapes or dtypes that disagree within a modality raise naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["collate", "Features", "Frames", "RESERVED"]


@dataclass(frozen=True)
class Frames:
    """A variable-length sample ``data [..., t]``: collate pads it along ``t`` and records its length."""

    data: Tensor


@dataclass(frozen=True)
class Features:
    """A sample's cached encoder output, ``[d]`` (pooled) or ``[n, d]`` (its valid tokens): collate
    gives ``batch["<m>_features"]`` (``[b, d]``, or ``[b, n_max, d]`` with ``batch["<m>_features_mask"]``)
    in place of the modality's input, and the model skips that encoder."""

    data: Tensor


RESERVED = ("label", "present")


def collate(samples: Sequence[dict], preprocess: Mapping[str, Callable[[list], Any]] | None = None) -> dict:
    """Stack, pad and mask a list of samples; see the module docstring."""
    if len(samples) == 0:
        raise ValueError("collate: got no samples")
    modalities = sorted({k for s in samples for k, v in s.items() if k not in RESERVED and v is not None})
    batch: dict = {}
    present: dict[str, Tensor] = {}
    for m in modalities:
        items = [s.get(m) for s in samples]
        if any(isinstance(x, Features) for x in items):
            batch.update(_cached_features(m, items))
            present[m] = torch.tensor([x is not None for x in items])
            continue
        if preprocess is not None and m in preprocess:
            batch[m] = _preprocessed(m, items, preprocess[m])
            present[m] = torch.tensor([x is not None for x in items])
            continue
        if any(isinstance(x, Frames) for x in items):
            batch[m], batch[f"{m}_lengths"] = _pad_frames(m, items)
            present[m] = torch.tensor([x is not None for x in items])
            continue
        ref = next(x for x in items if x is not None)
        for i, x in enumerate(items):
            if x is None:
                continue
            if not isinstance(x, Tensor):
                raise TypeError(f"collate: sample {i} {m!r} is a {type(x).__name__}, expected a Tensor")
            if x.dtype != ref.dtype or x.dim() != ref.dim():
                raise ValueError(
                    f"collate: {m!r} samples disagree: sample {i} is {x.dtype} {list(x.shape)}, "
                    f"an earlier one {ref.dtype} {list(ref.shape)}"
                )
        present[m] = torch.tensor([x is not None for x in items])
        if ref.dim() == 1:
            batch[m], lengths = _pad_last_dim(items)
            if ref.is_floating_point():
                batch[f"{m}_lengths"] = lengths
        else:
            for i, x in enumerate(items):
                if x is not None and x.shape != ref.shape:
                    raise ValueError(
                        f"collate: {m!r} needs one shape per batch: sample {i} is {list(x.shape)}, "
                        f"an earlier one {list(ref.shape)}"
                    )
            batch[m] = torch.stack([ref.new_zeros(ref.shape) if x is None else x for x in items])
    batch["label"] = _labels(samples)
    batch["present"] = present
    return batch


def _preprocessed(m: str, items: list, fn: Callable[[list], Any]) -> Tensor | dict[str, Tensor]:
    """``fn`` on the present rows' raw samples, spread back over the batch (missing rows: row 0's copy)."""
    rows = [i for i, x in enumerate(items) if x is not None]
    out = fn([items[i] for i in rows])
    parts = out if isinstance(out, Mapping) else {"": out}
    for k, v in parts.items():
        if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != len(rows):
            got = f"{v.dtype} {list(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"collate: {m!r} preprocessing of {len(rows)} samples gave {k or 'a value'} {got}, expected [{len(rows)}, ...]")
    if len(rows) == len(items):
        return out
    index = torch.zeros(len(items), dtype=torch.long)
    index[rows] = torch.arange(len(rows))
    return {k: v[index] for k, v in out.items()} if isinstance(out, Mapping) else out[index]


def _cached_features(m: str, items: list) -> dict[str, Tensor]:
    """``{<m>_features: [b, d]}`` or, for tokens, ``{<m>_features: [b, n_max, d], <m>_features_mask: bool [b, n_max]}``;
    a missing sample's slot is zeros (and all False)."""
    data = [None if x is None else x.data for x in items]
    ref = next(x for x in data if x is not None)
    if not all(x is None or (x.dim() == ref.dim() and x.shape[-1] == ref.shape[-1]) for x in data):
        raise ValueError(f"collate: {m!r} cached features disagree in shape")
    if ref.dim() == 1:
        return {f"{m}_features": torch.stack([ref.new_zeros(ref.shape) if x is None else x for x in data])}
    n = max(x.shape[0] for x in data if x is not None)
    out = ref.new_zeros(len(data), n, ref.shape[-1])
    mask = torch.zeros(len(data), n, dtype=torch.bool)
    for i, x in enumerate(data):
        if x is not None:
            out[i, : x.shape[0]] = x
            mask[i, : x.shape[0]] = True
    return {f"{m}_features": out, f"{m}_features_mask": mask}


def _pad_frames(m: str, items: list) -> tuple[Tensor, Tensor]:
    """``(zero-padded [b, ..., t_max], lengths long [b])``; a missing sample gets ``t_max`` zeros."""
    ref = next(x for x in items if x is not None)
    for i, x in enumerate(items):
        if x is None:
            continue
        if not isinstance(x, Frames):
            raise TypeError(f"collate: {m!r} mixes Frames and {type(x).__name__} samples (sample {i})")
        if x.data.dtype != ref.data.dtype or x.data.shape[:-1] != ref.data.shape[:-1]:
            raise ValueError(
                f"collate: {m!r} frames disagree: sample {i} is {x.data.dtype} {list(x.data.shape)}, "
                f"an earlier one {ref.data.dtype} {list(ref.data.shape)} (only the last dim may differ)"
            )
    return _pad_last_dim([None if x is None else x.data for x in items])


def _pad_last_dim(items: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    """Right-pad along the last dim with zeros: ``(padded [b, ..., t_max], lengths long [b])``; a
    missing sample (None) gets ``t_max`` zeros. The samples agree in every other dim (checked)."""
    ref = next(x for x in items if x is not None)
    width = max(x.shape[-1] for x in items if x is not None)
    out = ref.new_zeros(len(items), *ref.shape[:-1], max(width, 1))
    for i, x in enumerate(items):
        if x is not None:
            out[i, ..., : x.shape[-1]] = x
    return out, torch.tensor([width if x is None else x.shape[-1] for x in items])


def _labels(samples: Sequence[dict]) -> Tensor:
    labels = []
    for i, s in enumerate(samples):
        if "label" not in s:
            raise ValueError(f"collate: sample {i} has no 'label'")
        labels.append(s["label"])
    kinds = {"tensor" if isinstance(y, Tensor) else "float" if isinstance(y, float) else "int" for y in labels}
    if len(kinds) > 1:
        raise TypeError(f"collate: labels mix {sorted(kinds)}; one kind per dataset")
    kind = kinds.pop()
    if kind == "tensor":
        shapes = {tuple(y.shape) for y in labels}
        if len(shapes) > 1:
            raise ValueError(f"collate: label tensors disagree in shape: {sorted(shapes)}")
        return torch.stack(labels)
    if kind == "float":
        return torch.tensor(labels, dtype=torch.float32)
    return torch.tensor([int(y) for y in labels], dtype=torch.long)
