"""Feature transfer: a trained run's encoder features of a split, written for other models to train on.

``fusionzoo embed RUN --split train,val,test --out feats/`` writes ``feats/<split>.safetensors`` per
split: ``features.<modality>`` (``float32 [n, d]``, each encoder's pooled features; an alignment
run's embeddings), ``present.<modality>`` (``uint8 [n]``, 0 where the sample lacks the modality: its
row is what the encoder made of the padding, not to be used), ``label`` and ``index`` (the sample's
position in the split; with a ``manifest``, ``line``: its line in the file). The file's metadata
names the run, the checkpoint, the split and the widths. The ``features`` dataset
(:class:`~fusionzoo.data.features.FeatureDataset`) reads the folder back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from fusionzoo.config import build_dataset
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import input_kwargs, preprocessors
from fusionzoo.models.alignment import AlignmentModel
from fusionzoo.training.checkpoint import load_data_state, load_run, resolve_checkpoint
from fusionzoo.training.evaluate import move_batch
from fusionzoo.training.runfolder import claim_output

__all__ = ["embed_run"]


@torch.no_grad()
def embed_run(run: str | Path, splits: Iterable[str] = ("train", "val", "test"), out: str | Path | None = None, batch_size: int = 256) -> list[Path]:
    """Write the features of each split (see the module docstring); returns the files."""
    run_dir, _ = resolve_checkpoint(run)
    model, cfg, checkpoint = load_run(run)
    device = next(model.parameters()).device
    splits = list(splits)
    out = claim_output(Path(out) if out is not None else run_dir / "features", [f"{s}.safetensors" for s in splits], "embed")
    fitted = load_data_state(run_dir)
    written = []
    for split in splits:
        dataset = build_dataset(cfg, split, fitted)
        features: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
        present: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
        labels = []
        for batch in make_loader(dataset, batch_size, preprocess=preprocessors(model.encoders)):
            batch = move_batch(batch, device)
            n = batch["label"].shape[0]
            outputs = model(batch) if isinstance(model, AlignmentModel) else {
                m: model.encoders[m](batch[m], **input_kwargs(model.encoders[m], batch, m)) for m in model.modalities if m in batch
            }
            for m in model.modalities:
                if m not in outputs and isinstance(model, AlignmentModel):
                    raise ValueError(f"embed: the {split} split has no {m!r} input in a batch; the run's model reads {list(model.modalities)}")
                if m not in outputs:  # no sample of this batch has it: zero rows, marked absent
                    features[m].append(torch.zeros(n, model.encoders[m].out_dim))
                    present[m].append(torch.zeros(n, dtype=torch.bool))
                    continue
                features[m].append(outputs[m].float().cpu())
                present[m].append(batch.get("present", {}).get(m, torch.ones(n, dtype=torch.bool, device=device)).cpu())
            labels.append(batch["label"].cpu())
        tensors = {f"features.{m}": torch.cat(v) for m, v in features.items()}
        tensors |= {f"present.{m}": torch.cat(v).to(torch.uint8) for m, v in present.items()}
        tensors["label"] = torch.cat(labels)
        tensors["index"] = torch.arange(len(dataset))
        if hasattr(dataset, "line_of"):
            tensors["line"] = torch.tensor([dataset.line_of(i) for i in range(len(dataset))])
        meta = {
            "run": str(run_dir), "checkpoint": str(checkpoint), "split": split, "task": getattr(dataset, "task", "multiclass"),
            "dims": json.dumps({m: int(tensors[f"features.{m}"].shape[1]) for m in model.modalities}),
            "num_classes": str(getattr(dataset, "num_classes", int(tensors["label"].max()) + 1)),
        }
        path = out / f"{split}.safetensors"
        _save_atomic(tensors, meta, path)
        written.append(path)
    return written


def _save_atomic(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
