"""The fusion block contract and the presence handling every block shares.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features.

A block is built with ``in_dims`` (``{modality: d_m}``) and ``out_dim``, and called as
``block(features, present=None)``. :meth:`FusionBlock.prepare` turns whatever subset of modalities
the caller passed into a complete, validated pair ``(features, present)``:

* every modality of the block is there, in sorted order; a modality absent from ``features`` is a
  zero tensor whose ``present`` is all False (the whole batch lacks it);
* every slot that ``present`` marks missing holds exactly 0 (``torch.where``, so NaN and inf in a
  missing slot never reach the arithmetic);
* pooled blocks get ``features[m]: [b, d_m]`` and ``present[m]: bool [b]``; token blocks get
  ``features[m]: [b, n_m, d_m]`` and ``present[m]: bool [b, n_m]`` (a pooled input is one token,
  a ``[b]`` presence is spread over that modality's tokens).

Blocks then only have to decide what a missing slot *means* (a learned embedding, a masked
softmax, a renormalised weight), never how to find it. Whether a sample has anything present is
read from ``present``, never from computed weights.

The fast path, for blocks that set ``fast_path = True`` (every built-in block): when nothing is
missing (every modality passed, and ``present`` is ``None`` or all true; the all-true check runs
only for CPU masks outside ``torch.compile`` and export, where it costs no device sync and no graph
break), ``prepare`` returns ``present=None`` and the block skips its masking. The masking helpers
of :mod:`fusionzoo.layers.masking` take ``None`` as "all present" and give the masked path's values
bit for bit, which a registry-wide test holds every such block to (setting ``block.fast_path =
False`` on an instance forces the masked path). A block that does not opt in always gets dicts.

Non-finite values in a *present* slot are not hidden: they propagate to that sample's output row,
and only to it (the other rows are bitwise unchanged). A registry-wide test holds every block to
this, as to the independence from missing slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from fusionzoo.layers.masking import zero_missing
from fusionzoo.layers.validation import check_dims, check_positive_int, check_tensor

__all__ = ["FusionBlock", "example_features", "example_present", "DEFAULT_DIMS"]

#: Small, unequal per-modality widths of the registry examples (and so of the contract tests).
DEFAULT_DIMS = {"audio": 12, "text": 20, "visual": 16}


class FusionBlock(nn.Module):
    """Base class of every fusion block: combines per-modality features into ``[b, out_dim]``.

    Subclasses set ``input_kind`` (``"pooled"`` or ``"tokens"``), call ``super().__init__`` with
    ``in_dims`` and ``out_dim``, and start ``forward`` with ``self.prepare(features, present)``.
    """

    input_kind: ClassVar[str] = "pooled"
    #: Whether ``prepare`` may return ``present=None`` when nothing is missing (see the module docstring).
    fast_path: bool = False

    def __init__(self, *, in_dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__()
        where = type(self).__name__
        self.in_dims: dict[str, int] = check_dims(in_dims, where=where)
        self.modalities: tuple[str, ...] = tuple(self.in_dims)
        self.out_dim: int = check_positive_int(out_dim, name="out_dim", where=where)

    def prepare(
        self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """Validate the inputs and complete them to every modality; ``present`` comes back ``None``
        when nothing is missing (the fast path). See the module docstring.

        On the fast path, a call whose inputs have the modalities (in the same order), shapes, dtypes
        and devices of the last call that passed the checks, with the same first parameter and no
        cast or move since, is not checked again: the first call with anything new is checked in
        full and names the modality."""
        memo = self.__dict__.get("_passed")
        if memo is not None and present is None and self.fast_path and self._passes_again(features, memo):
            if self.input_kind == "tokens":
                return {m: features[m].unsqueeze(1) if features[m].dim() == 2 else features[m] for m in self.modalities}, None
            return {m: features[m] for m in self.modalities}, None
        where = type(self).__name__
        self._check_keys(features, present, where)
        self._check_dtype_device(features, where)
        tokens = self.input_kind == "tokens"
        batch: int | None = None
        ref: Tensor | None = None
        out_f: dict[str, Tensor] = {}
        out_p: dict[str, Tensor] = {}
        for m in self.modalities:
            if m not in features:
                continue
            d = self.in_dims[m]
            x = features[m]
            if tokens and isinstance(x, Tensor) and x.dim() == 2:
                x = x.unsqueeze(1)
            check_tensor(x, name=f"{where} features[{m!r}]", shape=("B", "N", d) if tokens else ("B", d))
            if batch is None:
                batch, ref = x.shape[0], x
            elif x.shape[0] != batch:
                raise ValueError(
                    f"{where}: features[{m!r}] has batch size {x.shape[0]}, but earlier modalities have {batch}"
                )
            out_f[m] = x
            out_p[m] = self._presence(present, m, x, where)

        if self._nothing_missing(out_f, out_p):
            if present is None:
                self._remember(features)
            return out_f, None
        for m, mask in list(out_p.items()):
            if mask is None:
                out_p[m] = torch.ones(out_f[m].shape[:-1], dtype=torch.bool, device=out_f[m].device)
            else:
                out_f[m] = zero_missing(out_f[m], mask)
        # features is non-empty and holds only our modalities, so ref and batch are set here.
        for m in self.modalities:
            if m not in out_f:
                shape = (batch, 1, self.in_dims[m]) if tokens else (batch, self.in_dims[m])
                out_f[m] = ref.new_zeros(shape)  # type: ignore[union-attr]
                out_p[m] = torch.zeros(shape[:-1], dtype=torch.bool, device=ref.device)  # type: ignore[union-attr]
        return out_f, out_p  # type: ignore[return-value]

    def _check_keys(self, features: dict[str, Tensor], present: dict[str, Tensor] | None, where: str) -> None:
        """``features`` is a non-empty dict of our modalities; ``present`` names only modalities given."""
        if not isinstance(features, dict):
            raise TypeError(f"{where}: features must be a dict {{modality: Tensor}}, got {type(features).__name__}")
        for m in features:
            if m not in self.in_dims:
                raise ValueError(
                    f"{where}: got features for modality {m!r}, but the block was built for {list(self.modalities)}"
                )
        if len(features) == 0:
            raise ValueError(f"{where}: features is empty; pass at least one of {list(self.modalities)}")
        if present is None:
            return
        if not isinstance(present, dict):
            raise TypeError(f"{where}: present must be a dict {{modality: BoolTensor}}, got {type(present).__name__}")
        for m in present:
            if m not in features:
                raise ValueError(
                    f"{where}: present[{m!r}] is given but features has no {m!r} (features holds {sorted(features)})"
                )

    def _remember(self, features: dict[str, Tensor]) -> None:
        """Keep what the checks of this passing call without ``present`` depended on (see
        :meth:`_passes_again`). Not kept for features in a dtype other than the parameters' (as under
        autocast, where the check depends on the autocast state)."""
        self.__dict__.pop("_passed", None)
        links = self._first_parameter_links()
        if links and any(x.dtype != links[-1][2].dtype for x in features.values()):
            return
        self.__dict__["_passed"] = (links, tuple((m, x.shape, x.dtype, x.device) for m, x in features.items()))

    @staticmethod
    def _passes_again(features: object, memo: tuple) -> bool:
        """Whether ``features`` has the kept call's modalities in its order, with its shapes, dtypes and
        devices, and the first parameter is the same object (looked up through the same module and
        parameter dicts, so a replaced submodule or parameter is seen). A cast or a move of the block
        drops what was kept (:meth:`_apply`)."""
        links, signature = memo
        if type(features) is not dict or len(features) != len(signature):
            return False
        for container, key, value in links:
            if container.get(key) is not value:
                return False
        for (m, shape, dtype, device), (k, x) in zip(signature, features.items()):
            if k != m or not isinstance(x, Tensor) or x.shape != shape or x.dtype is not dtype or x.device != device:
                return False
        return True

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """``.to()``, ``.double()``, ``.cuda()``… of the block or of a model holding it: the next call is checked in full."""
        self.__dict__.pop("_passed", None)
        return super()._apply(fn, recurse)

    def _nothing_missing(self, features: dict[str, Tensor], present: dict[str, Tensor | None]) -> bool:
        if not self.fast_path or len(features) < len(self.modalities):
            return False
        masks = [p for p in present.values() if p is not None]
        if not masks:
            return True
        if torch.compiler.is_compiling() or any(p.device.type != "cpu" for p in masks):
            return False  # reading the masks would sync a GPU or break the graph
        return all(bool(p.all()) for p in masks)

    def _check_dtype_device(self, features: dict[str, Tensor], where: str) -> None:
        """Features on the parameters' device, in their dtype (a lower precision is fine under
        ``torch.autocast``, which casts per op)."""
        param = self._first_parameter()
        if param is None:
            return
        for m, x in features.items():
            if not isinstance(x, Tensor):
                continue  # check_tensor names the type
            if x.device != param.device:
                raise ValueError(f"{where}: features[{m!r}] is on {x.device}, the block's parameters are on {param.device}")
            if x.is_floating_point() and x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
                raise TypeError(
                    f"{where}: features[{m!r}] is {str(x.dtype).removeprefix('torch.')}, the block's parameters are "
                    f"{str(param.dtype).removeprefix('torch.')}; cast the features, the block (.to(dtype)), or run under torch.autocast"
                )

    def _first_parameter(self) -> Tensor | None:
        """The block's first parameter, read in place now (after ``.to()``, a replaced parameter or a
        replaced submodule)."""
        links = self._first_parameter_links()
        return links[-1][2] if links else None

    def _first_parameter_links(self) -> tuple[tuple[dict, str, object], ...]:
        """``(dict, key, value)`` for each step from the block down to its first parameter: the
        ``_modules`` dicts, then the ``_parameters`` dict holding it. Its path is looked up once
        (walking the module tree costs ~40 us a call) and followed on every call, so a replaced
        parameter or submodule is seen."""
        path = self.__dict__.get("_first_param_path")
        if path is not None:
            links, module = [], self
            for key in path[:-1]:
                child = module._modules.get(key)
                if child is None:
                    break
                links.append((module._modules, key, child))
                module = child
            else:
                param = module._parameters.get(path[-1])
                if param is not None:
                    return (*links, (module._parameters, path[-1], param))
        name = next((n for n, _ in self.named_parameters()), None)
        self.__dict__["_first_param_path"] = None if name is None else tuple(name.split("."))
        return () if name is None else self._first_parameter_links()

    def _presence(self, present: dict[str, Tensor] | None, m: str, x: Tensor, where: str) -> Tensor | None:
        """The validated mask of ``m`` shaped as ``x`` without its last dim; ``None`` when not given."""
        shape = x.shape[:-1]
        if present is None or m not in present:
            return None
        mask = present[m]
        name = f"{where} present[{m!r}]"
        if self.input_kind == "tokens" and isinstance(mask, Tensor) and mask.dim() == 2:
            return check_tensor(mask, name=name, shape=tuple(shape), dtype=torch.bool, what="mask")
        check_tensor(mask, name=name, shape=(shape[0],), dtype=torch.bool, what="mask")
        return mask.unsqueeze(1).expand(shape) if self.input_kind == "tokens" else mask

    def example_input(self, batch_size: int = 2) -> dict[str, Tensor]:
        """Random features for every modality, shaped as this block expects."""
        return example_features(self.in_dims, batch_size, self.input_kind)

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}"


def example_features(
    in_dims: Mapping[str, int],
    batch_size: int,
    input_kind: str = "pooled",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """``{m: randn[b, d_m]}`` for pooled blocks, ``{m: randn[b, n_m, d_m]}`` with unequal ``n_m`` for token blocks."""
    out = {}
    for i, m in enumerate(sorted(in_dims)):
        shape = (batch_size, 3 + 2 * i, in_dims[m]) if input_kind == "tokens" else (batch_size, in_dims[m])
        out[m] = torch.randn(shape, generator=generator, device=device)
    return out


def example_present(modalities: tuple[str, ...] | list[str], batch_size: int) -> dict[str, Tensor]:
    """A presence pattern that walks through every subset: sample ``i`` has modality ``j`` when bit
    ``j`` of ``(2^M - 1 - i) mod 2^M`` is set, so sample 0 has everything and sample ``2^M - 1`` nothing."""
    mods = sorted(modalities)
    full = (1 << len(mods)) - 1
    code = (full - torch.arange(batch_size)) % (full + 1)
    return {m: (code >> j) & 1 == 1 for j, m in enumerate(mods)}
