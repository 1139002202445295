"""Transfer learning: freezing, per-group learning rates and fine-tuning strategies.

Weight files are read and partially loaded by :mod:`fusionzoo.weights` (re-exported here).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from fusionzoo.weights import LoadReport, adapt_input_conv, load_partial, load_state_dict_file

#: Set by fusionzoo.encoders.adapters on the backbone weights an adapter keeps frozen.
FROZEN_BASE = "_fusionzoo_frozen_base"

__all__ = [
    "LoadReport",
    "load_state_dict_file",
    "load_partial",
    "adapt_input_conv",
    "freeze",
    "fix_frozen_encoders",
    "unfreeze",
    "param_groups",
    "GradualUnfreezer",
    "apply_strategy",
    "STRATEGIES",
    "L2SP",
]


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


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def fix_frozen_encoders(model: nn.Module) -> list[str]:
    """Put every encoder of ``model`` that has no trainable parameter in eval mode for good (no
    dropout, BatchNorm statistics fixed; ``model.train()`` leaves it so, whichever of ``forward`` and
    ``forward_tokens`` runs): a frozen encoder is a fixed feature extractor, whose output for a
    sample is the same at every step, which is what lets the feature cache keep it. Returns the
    modalities fixed."""
    fixed = []
    for m, encoder in getattr(model, "encoders", {}).items():
        if any(p.requires_grad for p in encoder.parameters()):
            continue
        encoder.train = functools.partial(_stay_eval, encoder)  # the instance's own train(); a partial deep-copies
        encoder.eval()
        fixed.append(m)
    return fixed


def unfreeze(module: nn.Module, patterns: str | Iterable[str] = ("*",)) -> list[str]:
    """The inverse of :func:`freeze`; returns the names that changed. The base weights an adapter
    keeps frozen (LoRA, IA3, BitFit: :mod:`fusionzoo.encoders.adapters`) stay frozen."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    changed = [
        n for n, p in module.named_parameters() if not p.requires_grad and _matches(n, patterns) and not getattr(p, FROZEN_BASE, False)
    ]
    for name in changed:
        module.get_parameter(name).requires_grad_(True)
    _sync_batchnorm(module)
    return changed


def param_groups(
    model: nn.Module,
    base_lr: float,
    lr_mult: Mapping[str, float] | None = None,
    weight_decay: float = 0.0,
    decay_norms_and_biases: bool = True,
    no_decay: Iterable[str] = (),
) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates: each parameter takes the
    multiplier of the first pattern of ``lr_mult`` its name matches (1.0 when none does). Frozen
    parameters are included (they have no gradient, so the optimizer skips them) so that unfreezing
    later needs no change to the optimizer. With ``decay_norms_and_biases=False``, parameters with
    fewer than 2 dimensions (biases, norm weights, scales) get no weight decay, as timm does; nor do
    the parameters named in ``no_decay`` (those :class:`L2SP` pulls towards their source values)."""
    groups: dict[tuple[float, float], list] = {}
    no_decay = set(no_decay)
    for name, p in model.named_parameters():
        mult = next((m for pattern, m in (lr_mult or {}).items() if fnmatch.fnmatchcase(name, pattern)), 1.0)
        decay = weight_decay if (decay_norms_and_biases or p.ndim >= 2) and name not in no_decay else 0.0
        groups.setdefault((float(mult), float(decay)), []).append(p)
    return [{"params": ps, "lr": base_lr * mult, "lr_mult": mult, "weight_decay": wd} for (mult, wd), ps in groups.items()]


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


def apply_strategy(model: nn.Module, strategy: str, groups: list[list[str]] | None = None) -> GradualUnfreezer | None:
    """``finetune``: everything trains. ``linear_probe``: every encoder frozen (fusion and head train).
    ``gradual``: encoders frozen, then unfrozen one modality per epoch, or, with ``groups`` (lists of
    name patterns, the top of the network first), one group per epoch: for a single encoder, layer
    by layer (returns the unfreezer)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "finetune":
        unfreeze(model)
        return None
    if strategy == "linear_probe":
        freeze(model, "encoders.*")
        return None
    if groups is not None:
        return GradualUnfreezer(model, groups)
    modalities = sorted({n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("encoders.")})
    return GradualUnfreezer(model, [[f"encoders.{m}.*"] for m in modalities])


class L2SP(nn.Module):
    """The L2-SP transfer regulariser (Li et al. 2018, https://arxiv.org/abs/1802.01483):
    ``alpha / 2 * sum ||w - w0||^2`` over the named parameters, ``w0`` their values at construction
    (the source weights just loaded; kept as non-persistent buffers). Unlike weight decay, it pulls
    towards what was learned on the source task, not towards zero.

    ``forward(model) -> scalar``; the model is passed in, so the regulariser holds no reference to it.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], alpha: float) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"l2sp: alpha must be >= 0, got {alpha}")
        self.alpha, self.names = float(alpha), sorted(names)
        for i, name in enumerate(self.names):
            self.register_buffer(f"source_{i}", model.get_parameter(name).detach().clone(), persistent=False)

    def forward(self, model: nn.Module) -> Tensor:
        if not self.names:
            return torch.zeros((), device=next(iter(model.parameters())).device)
        total = sum((model.get_parameter(n) - getattr(self, f"source_{i}")).pow(2).sum() for i, n in enumerate(self.names))
        return 0.5 * self.alpha * total
