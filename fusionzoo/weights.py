"""Reading weight files safely and loading them partially: a leaf that encoders and transfer share.

Files are read with safetensors or ``torch.load(weights_only=True)``, never plain pickle.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "load_state_dict_file", "load_partial", "adapt_input_conv"]


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` (common checkpoint
    layouts) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # arbitrary bytes make the weights-only unpickler raise almost anything (IndexError, KeyError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a weights file that loads without unpickling code "
            f"(torch.load with weights_only=True failed: {first[:200]})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict {{name: Tensor}}, got {type(obj).__name__}")
    return dict(obj)


@dataclass
class LoadReport:
    """What :func:`load_partial` did: keys loaded, left out by the ``include`` / ``exclude`` patterns,
    missing from the file, unexpected in the file, and present in both with different shapes
    (``key -> (model shape, file shape)``)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [
            f"loaded      {len(self.loaded):5d}",
            f"by pattern  {len(self.skipped):5d}" + _sample(self.skipped),
            f"missing     {len(self.missing):5d}" + _sample(self.missing),
            f"unexpected  {len(self.unexpected):5d}" + _sample(self.unexpected),
            f"mismatched  {len(self.mismatched):5d}"
            + _sample([f"{k} model {list(a)} file {list(b)}" for k, (a, b) in self.mismatched.items()]),
        ]
        return "\n".join(rows)


def _sample(keys: list[str], n: int = 4) -> str:
    if not keys:
        return ""
    more = f", ... (+{len(keys) - n})" if len(keys) > n else ""
    return "  " + ", ".join(keys[:n]) + more


def load_partial(
    module: nn.Module,
    state_dict_or_path: Mapping[str, Tensor] | str | Path,
    key_map: Mapping[str, str] | None = None,
    strict_shapes: bool = True,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> LoadReport:
    """Load every tensor whose (prefix-mapped) name and shape match ``module``'s state dict.

    ``key_map`` maps file prefixes to module prefixes, e.g. ``{"backbone.": "encoders.visual.trunk."}``
    (the longest matching prefix wins). ``include`` and ``exclude`` are fnmatch patterns over the
    module's names (after the map): only names matching an ``include`` pattern (all, without one)
    and no ``exclude`` pattern are loaded, the others reported as skipped by pattern, so the lower
    layers alone can be transferred (``include: ["encoders.visual.trunk.layer1*"]``). With
    ``strict_shapes`` a shape mismatch raises ``ValueError`` listing every mismatch; without,
    mismatched tensors are skipped and reported.
    """
    source = (
        load_state_dict_file(state_dict_or_path)
        if isinstance(state_dict_or_path, (str, Path))
        else dict(state_dict_or_path)
    )
    prefixes = sorted((key_map or {}).items(), key=lambda kv: -len(kv[0]))
    mapped: dict[str, Tensor] = {}
    for key, value in source.items():
        for old, new in prefixes:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        mapped[key] = value
    target = module.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    include, exclude = (None if include is None else list(include)), list(exclude)
    for key, value in mapped.items():
        if (include is not None and not any(fnmatch.fnmatchcase(key, p) for p in include)) or any(fnmatch.fnmatchcase(key, p) for p in exclude):
            report.skipped.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.mismatched[key] = (tuple(target[key].shape), tuple(value.shape))
        else:
            to_load[key] = value
    skipped = set(report.skipped)
    report.missing = [k for k in target if k not in to_load and k not in report.mismatched and k not in skipped]
    report.loaded = sorted(to_load)
    if strict_shapes and report.mismatched:
        raise ValueError(f"shape mismatch loading into {type(module).__name__} (nothing was loaded):\n{report}")
    module.load_state_dict(to_load, strict=False)
    return report


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a pretrained first-conv weight ``[o, c, kh, kw]`` to ``in_channels`` inputs, as timm does:
    sum over the channels for one input channel (a grey image gives the response of the same image in
    colour), otherwise tile the channels and rescale by ``c / in_channels``."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c / in_channels)
