"""Parameter-efficient fine-tuning of a foundation backbone: LoRA and IA3 through ``peft``, and BitFit.

An encoder built with ``adapter={method: lora, r: 8, alpha: 16, target_modules: [...]}`` (``hf_text``,
``hf_audio``, ``hf_vision``, ``timm``) gets the adapter injected into its backbone
(``peft.inject_adapter_in_model``) and every other backbone weight frozen: only the adapter, the
encoder's projection, the fusion block and the head train. The adapter is part of the model (its
weights are in every checkpoint and ``model.safetensors``, and the encoder section that names it
rebuilds it), so ``eval``, ``--resume`` and ``from_pretrained`` need nothing else;
:func:`merge_adapter` folds LoRA / IA3 into the base weights for serving (``save_pretrained(...,
merge_adapters=True)``, ``export``).

Methods:

* ``lora`` (Hu et al. 2021, https://arxiv.org/abs/2106.09685): ``r`` (8), ``alpha`` (16),
  ``dropout`` (0.0), ``target_modules``;
* ``ia3`` (Liu et al. 2022, https://arxiv.org/abs/2205.05638): learned scales of ``target_modules``'
  outputs (of their inputs for those also in ``feedforward_modules``);
* ``bitfit`` (Ben Zaken et al. 2021, https://arxiv.org/abs/2106.10199): the backbone's biases train,
  nothing is added.

``target_modules`` default to peft's table for the model type, else to the attention projections
found by name (``query``/``value``, ``q_proj``/``v_proj``, timm's ``qkv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fusionzoo.extras import require

__all__ = ["ADAPTER_METHODS", "FROZEN_BASE", "add_adapter", "merge_adapter", "adapter_parameters"]

ADAPTER_METHODS = ("lora", "ia3", "bitfit")
OPTIONS = {"lora": ("r", "alpha", "dropout", "target_modules"), "ia3": ("target_modules", "feedforward_modules"), "bitfit": ()}
#: Set on a backbone weight that an adapter keeps frozen: :func:`fusionzoo.transfer.unfreeze` leaves it
#: so (the same name as ``fusionzoo.transfer.FROZEN_BASE``, which sits above this floor).
FROZEN_BASE = "_fusionzoo_frozen_base"
_ATTENTION_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("qkv",))


def _default_targets(backbone: nn.Module, model_type: str | None, what: str) -> list[str]:
    constants = require("peft.utils.constants", what)
    table = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    if model_type in table:
        return list(table[model_type])
    linear = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules() if isinstance(m, nn.Linear)}
    for names in _ATTENTION_NAMES:
        if set(names) <= linear:
            return list(names)
    raise ValueError(f"{what}: adapter.target_modules: give the names of the layers to adapt (no default for this model)")


def add_adapter(backbone: nn.Module, spec: Mapping[str, Any], *, what: str, model_type: str | None = None) -> None:
    """Inject the adapter ``spec`` describes into ``backbone`` and freeze the rest of it (see the module docstring)."""
    if not isinstance(spec, Mapping) or spec.get("method") not in ADAPTER_METHODS:
        raise ValueError(f"{what}: adapter: a mapping with method one of {ADAPTER_METHODS}, got {spec!r}")
    method = spec["method"]
    options = {k: v for k, v in spec.items() if k != "method"}
    unknown = sorted(set(options) - set(OPTIONS[method]))
    if unknown:
        raise ValueError(f"{what}: adapter.{unknown[0]}: unknown option for {method} (allowed: {', '.join(OPTIONS[method]) or 'none'})")
    if method == "bitfit":
        names = [n for n, _ in backbone.named_parameters() if n.endswith("bias")]
        if not names:
            raise ValueError(f"{what}: adapter bitfit: the backbone has no biases to train")
    else:
        peft = require("peft", what)
        targets = list(options.get("target_modules") or _default_targets(backbone, model_type, what))
        if method == "lora":
            r, alpha = options.get("r", 8), options.get("alpha", 16)
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ValueError(f"{what}: adapter.r: a positive int, got {r!r}")
            config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=float(options.get("dropout", 0.0)), target_modules=targets, bias="none")
        else:
            config = peft.IA3Config(target_modules=targets, feedforward_modules=list(options.get("feedforward_modules", [])))
        try:
            peft.inject_adapter_in_model(config, backbone)
        except ValueError as e:
            raise ValueError(f"{what}: adapter {method}: {e}") from None
    trainable = set(adapter_parameters(backbone, method))
    for name, p in backbone.named_parameters():
        if name not in trainable:
            p.requires_grad_(False)
            setattr(p, FROZEN_BASE, True)


def adapter_parameters(backbone: nn.Module, method: str) -> list[str]:
    """The names of the backbone parameters ``method`` trains."""
    if method == "bitfit":
        return [n for n, _ in backbone.named_parameters() if n.endswith("bias")]
    marker = "lora_" if method == "lora" else "ia3_"
    return [n for n, _ in backbone.named_parameters() if marker in n]


def merge_adapter(backbone: nn.Module) -> None:
    """Fold every injected LoRA / IA3 layer into its base layer and put the base layer back in its
    place: the backbone is then the plain architecture with merged weights (BitFit adds nothing)."""
    tuners = require("peft.tuners.tuners_utils", "merge_adapter")
    for name, module in list(backbone.named_modules()):
        if isinstance(module, tuners.BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent_name) if parent_name else backbone, child, module.get_base_layer())
    for p in backbone.parameters():
        if hasattr(p, FROZEN_BASE):
            delattr(p, FROZEN_BASE)
