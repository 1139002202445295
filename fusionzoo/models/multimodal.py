"""Encoders + fusion + head, by composition.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from fusionzoo.atomic import atomic_folder, write_bytes_atomic, write_text_atomic
from fusionzoo.encoders.adapters import merge_adapter
from fusionzoo.encoders.base import input_kwargs
from fusionzoo.fusion.base import FusionBlock
from fusionzoo.models.saved_encoders import ENCODER_DIR, OVERRIDES_FILE, save_encoders

__all__ = ["MultimodalModel", "PRETRAINED_FILES"]

#: The files of a saved model folder (the Hugging Face Hub layout), besides optional extras.
PRETRAINED_FILES = ("config.yaml", "model.safetensors", "README.md")
#: Everything ``save_pretrained`` may have written there: a folder of these alone is replaced by a
#: new save (besides the ``files`` it is given: ``fusionzoo.hub``'s card and data state).
SAVED_FILES = (*PRETRAINED_FILES, ENCODER_DIR, OVERRIDES_FILE, "card.json", "data_state.json")


class MultimodalModel(nn.Module):
    """One encoder per modality, a fusion block, a head; runs on any subset of its modalities.

    The sizes are checked at construction: every encoder's ``out_dim`` must equal the fusion
    block's ``in_dims`` entry for its modality, and the head's ``in_dim`` the fusion ``out_dim``.

    Shapes: ``forward(batch)``: ``{m: input_m, "present"?: {m: bool [b]}} -> [b, out_dim]``.
    """

    def __init__(self, *, encoders: Mapping[str, nn.Module], fusion: FusionBlock, head: nn.Module) -> None:
        super().__init__()
        if not isinstance(fusion, FusionBlock):
            raise TypeError(f"fusion must be a FusionBlock, got {type(fusion).__name__}")
        if set(encoders) != set(fusion.modalities):
            raise ValueError(
                f"encoders are given for {sorted(encoders)} but the fusion block expects {list(fusion.modalities)}"
            )
        for m, enc in encoders.items():
            if getattr(enc, "out_dim", None) != fusion.in_dims[m]:
                raise ValueError(
                    f"{m}: encoder out_dim is {getattr(enc, 'out_dim', None)} but the fusion block expects "
                    f"in_dims[{m!r}] = {fusion.in_dims[m]}"
                )
            if fusion.input_kind == "tokens" and not getattr(enc, "has_tokens", False):
                raise ValueError(f"{m}: {type(fusion).__name__} fuses tokens but {type(enc).__name__} has no forward_tokens")
        if getattr(head, "in_dim", fusion.out_dim) != fusion.out_dim:
            raise ValueError(f"head in_dim is {head.in_dim} but the fusion block's out_dim is {fusion.out_dim}")
        self.modalities: tuple[str, ...] = fusion.modalities
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.fusion = fusion
        self.head = head
        self.out_dim: int = getattr(head, "out_dim", fusion.out_dim)
        #: The ``model:`` config section it was built from (set by ``build_model``), for ``save_pretrained``.
        self.config: dict[str, Any] | None = None

    def merged(self) -> MultimodalModel:
        """A copy with every encoder's LoRA / IA3 adapter folded into its base weights (the plain
        architecture, its config section without ``adapter``), in eval mode: for serving. The same
        outputs to float rounding; a model without adapters is copied as it is."""
        out = copy.deepcopy(self)
        for m, encoder in out.encoders.items():
            if getattr(encoder, "adapter", None) is None:
                continue
            merge_adapter(encoder.backbone)
            encoder.adapter = None
            if out.config is not None:
                out.config["encoders"][m] = {k: v for k, v in out.config["encoders"][m].items() if k != "adapter"}
        return out.eval()

    def save_pretrained(
        self, folder: str | Path, *, card: str | None = None, files: Mapping[str, str] | None = None, merge_adapters: bool = False,
        overwrite: bool = False,
    ) -> Path:
        """Save as a folder in the Hugging Face Hub layout: ``config.yaml`` (the ``model:`` section it
        was built from: a loadable config), ``model.safetensors``, ``README.md`` (the model card:
        ``card``, or a short one naming the parts) and ``files`` (name -> text: a label list,
        ``data_state.json``, ``card.json``) and what the encoders need besides their weights (a
        tokenizer, an image processor: ``encoders/<m>/`` and ``encoders.yaml``). Every file is written
        atomically, and the folder is replaced as a whole, so a re-save leaves nothing stale; a folder
        that holds other files (a run folder, a user's) is refused unless ``overwrite``. ``merge_adapters=True`` saves :meth:`merged` instead: the plain architecture, loadable
        without the adapter library; by default the adapters are saved as trained (and keep training
        after ``from_pretrained``).
        :func:`fusionzoo.from_pretrained` loads it; ``huggingface_hub.upload_folder`` can publish it."""
        if self.config is None:
            raise ValueError("save_pretrained: the model has no config; build it with fusionzoo.build_model (or set model.config)")
        if merge_adapters:
            return self.merged().save_pretrained(folder, card=card, files=files, overwrite=overwrite)
        folder = Path(folder)
        existing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        saved = {"config.yaml", "model.safetensors"} <= set(existing)  # a saved model's folder (else nothing in it is ours)
        foreign = [n for n in existing if not saved or n not in SAVED_FILES and n not in (files or {})]
        if foreign and not overwrite:
            raise FileExistsError(
                f"save_pretrained: {folder} holds files a saved model does not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): give a new or empty folder, or a saved model's folder to replace "
                "(overwrite=True replaces the folder and everything in it)"
            )
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_folder(folder) as tmp:  # the folder is replaced whole: nothing of an earlier save is left stale
            write_bytes_atomic(tmp / "model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt", "library": "fusionzoo"}))
            write_text_atomic(tmp / "config.yaml", yaml.safe_dump({"model": self.config}, sort_keys=False))
            for name, text in (files or {}).items():
                write_text_atomic(tmp / name, text)
            save_encoders(self.encoders, tmp)
            write_text_atomic(tmp / "README.md", card if card is not None else self._short_card())
        return folder

    def _short_card(self) -> str:
        parts = [f"- {m}: `{self.config['encoders'][m]['name']}`" for m in self.modalities]  # type: ignore[index]
        return (
            "---\nlibrary_name: fusionzoo\n---\n\n# A fusionzoo model\n\n"
            + "\n".join(parts)
            + f"\n- fusion: `{self.config['fusion']['name']}`, head: `{self.config['head']['name']}`\n\n"  # type: ignore[index]
            "No training record was saved with it: `fusionzoo.hub.save_run` writes the full card from a run folder.\n"
        )

    def encode(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Run each encoder whose modality is in ``batch``; returns ``(features, present)``.

        Token-level fusion gets ``forward_tokens`` output; the encoder's padding mask is combined
        with the batch's per-sample presence. ``batch["<modality>_lengths"]`` (valid lengths of a
        padded input, e.g. ``audio_lengths``) is passed to an encoder that takes ``lengths=``.
        ``batch["<m>_features"]`` (the feature cache's output of a frozen encoder, with
        ``<m>_features_mask`` for tokens) stands in for that encoder.
        """
        if not isinstance(batch, dict):
            raise TypeError(f"batch must be a dict {{modality: Tensor}}, got {type(batch).__name__}")
        given = [m for m in self.modalities if m in batch or f"{m}_features" in batch]
        if not given:
            raise ValueError(f"batch holds none of the model's modalities {list(self.modalities)} (keys: {sorted(batch)})")
        batch_present: dict[str, Tensor] = batch.get("present") or {}  # type: ignore[assignment]
        features: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        for m in given:
            cached = batch.get(f"{m}_features")
            if self.fusion.input_kind == "tokens":
                tokens, pad = (cached, batch.get(f"{m}_features_mask")) if cached is not None else self.encode_tokens(m, batch)
                features[m] = tokens
                mask = pad
                if m in batch_present:
                    sample = batch_present[m].unsqueeze(1)
                    mask = sample.expand(tokens.shape[:2]) if pad is None else pad & sample
                if mask is not None:
                    present[m] = mask
            else:
                features[m] = cached if cached is not None else self.encoders[m](batch[m], **input_kwargs(self.encoders[m], batch, m))
                if m in batch_present:
                    present[m] = batch_present[m]
        return features, present

    def encode_tokens(self, m: str, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """``encoders[m].forward_tokens`` of ``batch[m]``: ``([b, n, d], padding mask [b, n] or None)``."""
        encoder = self.encoders[m]
        return encoder.forward_tokens(batch[m], **input_kwargs(encoder, batch, m))

    def fuse(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        return self.fusion(features, present)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        features, present = self.encode(batch)
        return self.head(self.fuse(features, present))

    def example_input(self, batch_size: int = 2) -> dict[str, Tensor]:
        """A batch of every encoder's example input."""
        return {m: self.encoders[m].example_input(batch_size) for m in self.modalities}

    @torch.no_grad()
    def num_params(self) -> dict[str, int]:
        """Parameter count per part: ``encoders.<m>``, ``fusion``, ``head`` and ``total``."""
        counts = {f"encoders.{m}": sum(p.numel() for p in e.parameters()) for m, e in self.encoders.items()}
        counts["fusion"] = sum(p.numel() for p in self.fusion.parameters())
        counts["head"] = sum(p.numel() for p in self.head.parameters())
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
