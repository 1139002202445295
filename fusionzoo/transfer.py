"""Transfer learning: safe weight files, partial key-mapped loading, freezing, per-group learning
rates and fine-tuning strategies.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never plain pickle.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "LoadReport",
    "load_state_dict_file",
    "load_partial",
    "adapt_input_conv",
    "freeze",
    "unfreeze",
    "param_groups",
    "GradualUnfreezer",
    "apply_strategy",
    "STRATEGIES",
]


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` (common checkpoint
    layouts) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict {{name: Tensor}}, got {type(obj).__name__}")
    return dict(obj)


@dataclass
class LoadReport:
    """What :func:`load_partial` did: keys loaded, missing from the file, unexpected in the file, and
    present in both with different shapes (``key -> (model shape, file shape)``)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def __str__(self) -> str:
        rows = [
            f"loaded      {len(self.loaded):5d}",
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
) -> LoadReport:
    """Load every tensor whose (prefix-mapped) name and shape match ``module``'s state dict.

    ``key_map`` maps file prefixes to module prefixes, e.g. ``{"backbone.": "encoders.visual.trunk."}``
    (the longest matching prefix wins). With ``strict_shapes`` a shape mismatch raises ``ValueError``
    listing every mismatch; without, mismatched tensors are skipped and reported.
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
    for key, value in mapped.items():
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.mismatched[key] = (tuple(target[key].shape), tuple(value.shape))
        else:
            to_load[key] = value
    report.missing = [k for k in target if k not in to_load and k not in report.mismatched]
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


# ---------------------------------------------------------------- freezing and learning rates

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _keep_eval(module: nn.Module, args) -> None:
    # Runs before every forward: model.train() cannot switch a frozen BatchNorm back to training.
    module.training = False


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _sync_batchnorm(module: nn.Module) -> None:
    """Keep every BatchNorm whose parameters are all frozen in eval mode (running stats fixed)."""
    for bn in module.modules():
        if not isinstance(bn, _BN_TYPES):
            continue
        frozen = all(not p.requires_grad for p in bn.parameters(recurse=False))
        handle = getattr(bn, "_fusionzoo_frozen", None)
        if frozen and handle is None:
            bn._fusionzoo_frozen = bn.register_forward_pre_hook(_keep_eval)
            bn.eval()
        elif not frozen and handle is not None:
            handle.remove()
            del bn._fusionzoo_frozen
            bn.train(module.training)


def freeze(module: nn.Module, patterns: str | Iterable[str] = ("*",)) -> list[str]:
    """Stop training the parameters whose names match any fnmatch pattern (``"encoders.visual.*"``);
    returns the names that changed. BatchNorm layers left without trainable parameters stay in eval
    mode, whatever ``module.train()`` says, so their running statistics do not drift."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    changed = [n for n, p in module.named_parameters() if p.requires_grad and _matches(n, patterns)]
    for name in changed:
        module.get_parameter(name).requires_grad_(False)
    _sync_batchnorm(module)
    return changed


def unfreeze(module: nn.Module, patterns: str | Iterable[str] = ("*",)) -> list[str]:
    """The inverse of :func:`freeze`; returns the names that changed."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    changed = [n for n, p in module.named_parameters() if not p.requires_grad and _matches(n, patterns)]
    for name in changed:
        module.get_parameter(name).requires_grad_(True)
    _sync_batchnorm(module)
    return changed


def param_groups(
    model: nn.Module, base_lr: float, lr_mult: Mapping[str, float] | None = None, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates: each parameter takes the
    multiplier of the first pattern of ``lr_mult`` its name matches (1.0 when none does). Frozen
    parameters are included (they have no gradient, so AdamW skips them) so that unfreezing later
    needs no change to the optimizer."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        mult = next((m for pattern, m in (lr_mult or {}).items() if fnmatch.fnmatchcase(name, pattern)), 1.0)
        groups.setdefault(float(mult), []).append(p)
    return [{"params": ps, "lr": base_lr * mult, "lr_mult": mult, "weight_decay": weight_decay} for mult, ps in groups.items()]


class GradualUnfreezer:
    """ULMFiT-style gradual unfreezing: ``groups`` (lists of patterns) from the top of the network
    down; at epoch ``e`` the first ``e + 1`` groups are trainable. Everything matching a group is
    frozen at construction."""

    def __init__(self, model: nn.Module, groups: list[list[str]]) -> None:
        self.model, self.groups = model, [list(g) for g in groups]
        for g in self.groups:
            freeze(model, g)

    def step(self, epoch: int) -> list[str]:
        changed: list[str] = []
        for g in self.groups[: epoch + 1]:
            changed += unfreeze(self.model, g)
        return changed


STRATEGIES = ("finetune", "linear_probe", "gradual")


def apply_strategy(model: nn.Module, strategy: str) -> GradualUnfreezer | None:
    """``finetune``: everything trains. ``linear_probe``: every encoder frozen (fusion and head train).
    ``gradual``: encoders frozen, then unfrozen one modality per epoch (returns the unfreezer)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "finetune":
        unfreeze(model)
        return None
    if strategy == "linear_probe":
        freeze(model, "encoders.*")
        return None
    modalities = sorted({n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("encoders.")})
    return GradualUnfreezer(model, [[f"encoders.{m}.*"] for m in modalities])
