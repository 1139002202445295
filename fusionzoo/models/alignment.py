"""Encoders into one shared embedding space, for cross-modal alignment (contrastive or triplet).

Legend: ``b`` batch, ``m`` modality, ``d`` embedding width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from fusionzoo.encoders.base import input_kwargs

__all__ = ["AlignmentModel"]


class AlignmentModel(nn.Module):
    """One encoder per modality, all of the same ``out_dim``: the embedding space that an ``align:``
    config trains. Its parameter names (``encoders.<m>.*``) match :class:`MultimodalModel`'s, so a
    classifier can start from an alignment run (``train.init_from``).

    ``order`` names the query modality first (retrieval ``order[0] -> order[1]``, zero-shot
    classification of ``order[0]``); default sorted.

    Shapes: ``forward(batch)``: ``{m: input_m} -> {m: [b, d]}`` for every modality in the batch.
    """

    def __init__(self, *, encoders: Mapping[str, nn.Module], order: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"alignment needs at least two modalities, got {sorted(encoders)}")
        widths = {m: getattr(e, "out_dim", None) for m, e in encoders.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(f"the embedding widths must match, got {widths}")
        self.modalities: tuple[str, ...] = tuple(sorted(encoders))
        self.order: tuple[str, ...] = tuple(order) if order is not None else self.modalities
        if sorted(self.order) != sorted(self.modalities):
            raise ValueError(f"order {list(self.order)} must list the modalities {list(self.modalities)}")
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.out_dim: int = next(iter(widths.values()))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(batch, dict):
            raise TypeError(f"batch must be a dict {{modality: Tensor}}, got {type(batch).__name__}")
        out = {}
        for m in self.modalities:
            if m in batch:
                out[m] = self.encoders[m](batch[m], **input_kwargs(self.encoders[m], batch, m))
        if not out:
            raise ValueError(f"batch holds none of the model's modalities {list(self.modalities)} (keys: {sorted(batch)})")
        return out

    def example_input(self, batch_size: int = 2) -> dict[str, Tensor]:
        return {m: self.encoders[m].example_input(batch_size) for m in self.modalities}
