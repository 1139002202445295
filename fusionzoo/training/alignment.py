"""Cross-modal alignment: two encoders trained into one embedding space with a contrastive loss.

A config with an ``align:`` section (instead of ``model:``) trains this way::

    data: {name: avdigits, root: ../shared/datasets/avdigits}
    align:
      encoders:
        audio: {name: audio_spec_cnn, out_dim: 64, ...}
        visual: {name: lenet, out_dim: 64}
      loss: {name: info_nce}            # or triplet
    train: {epochs: 15, batch_size: 128, lr: 0.002}

Each epoch reports retrieval (recall@1/5/10 and median rank, both directions) on the test split and
zero-shot classification of the first modality: each test sample takes the class whose mean
second-modality embedding (over the labelled training set) is nearest, so no classifier is ever
trained on the first modality.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from fusionzoo.atomic import write_text_atomic
from fusionzoo.config import ConfigError, build_from_section, load_config
from fusionzoo.data.loader import make_loader
from fusionzoo.registry import ENCODERS, LOSSES
from fusionzoo.training.checkpoint import save_checkpoint
from fusionzoo.training.engine import (
    _lr_lambda,
    build_datasets,
    default_run_dir,
    num_classes_of,
)
from fusionzoo.training.evaluate import move_batch
from fusionzoo.training.retrieval import retrieval_metrics
from fusionzoo.training.settings import TrainSettings

__all__ = ["train_alignment", "build_alignment", "embed"]


def build_alignment(cfg: Mapping[str, Any]) -> tuple[nn.ModuleDict, nn.Module, tuple[str, str]]:
    """The two encoders, the loss, and the order (query modality first) of an ``align:`` config."""
    origin = cfg.get("_origin", "<dict>")
    section = cfg["align"]
    sections = section.get("encoders", {})
    if len(sections) != 2:
        raise ConfigError(f"{origin}: align.encoders: name exactly two modalities, got {sorted(sections)}")
    encoders = nn.ModuleDict(
        {m: build_from_section(ENCODERS, s, f"align.encoders.{m}", origin, modality=m) for m, s in sorted(sections.items())}
    )
    widths = {m: e.out_dim for m, e in encoders.items()}
    if len(set(widths.values())) != 1:
        raise ConfigError(f"{origin}: align.encoders: the embedding widths must match, got {widths}")
    loss = build_from_section(LOSSES, section.get("loss", {"name": "info_nce"}), "align.loss", origin)
    order = tuple(section.get("order", sorted(sections)))
    return encoders, loss, order  # type: ignore[return-value]


def _encode(encoder: nn.Module, batch: dict, m: str) -> Tensor:
    lengths = batch.get(f"{m}_lengths")
    return encoder(batch[m], lengths=lengths) if lengths is not None else encoder(batch[m])


@torch.no_grad()
def embed(encoders: nn.ModuleDict, loader: Iterable[dict], device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
    """Embeddings of every sample for each modality, and the labels."""
    encoders.eval()
    out: dict[str, list[Tensor]] = {m: [] for m in encoders}
    labels = []
    for batch in loader:
        batch = move_batch(batch, device)
        for m, enc in encoders.items():
            out[m].append(_encode(enc, batch, m).float().cpu())
        labels.append(batch["label"].cpu())
    return {m: torch.cat(v) for m, v in out.items()}, torch.cat(labels)


def _zero_shot(query: Tensor, support: Tensor, support_labels: Tensor, labels: Tensor, classes: int) -> float:
    means = torch.stack([F.normalize(support[support_labels == c], dim=-1).mean(0) for c in range(classes)])
    pred = (F.normalize(query, dim=-1) @ F.normalize(means, dim=-1).T).argmax(1)
    return (pred == labels).float().mean().item()


def train_alignment(
    config: str | Path | Mapping[str, Any],
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    overrides: Iterable[str] = (),
    log: bool = True,
) -> dict[str, Any]:
    """Train an ``align:`` config; returns the summary written to ``metrics.json``."""
    cfg = load_config(config, overrides) if not (isinstance(config, Mapping) and "_origin" in config) else dict(config)
    settings = TrainSettings.from_dict(cfg.get("train"), cfg["_origin"])
    seed = int(cfg.get("seed", 0))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if not overwrite and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --overwrite to replace it")
    say = print if log else (lambda *a, **k: None)
    device = torch.device("cuda" if settings.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    train_set, test_set = build_datasets(cfg)
    encoders, loss_fn, (first, second) = build_alignment(cfg)
    encoders.to(device), loss_fn.to(device)
    classes = num_classes_of(train_set)
    loader = make_loader(train_set, settings.batch_size, shuffle=True, seed=seed, drop_last=True)
    eval_train = make_loader(train_set, 256)
    eval_test = make_loader(test_set, 256)
    params = list(encoders.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(round(settings.warmup_epochs * steps), settings.epochs * steps))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump({k: v for k, v in cfg.items() if k != "_origin"}, sort_keys=False))
    history = []
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        torch.manual_seed(seed + 1_000_003 * (epoch + 1))
        loader.generator.manual_seed(seed + epoch)
        encoders.train()
        total, count = 0.0, 0
        for batch in loader:
            batch = move_batch(batch, device)
            loss = loss_fn(_encode(encoders[first], batch, first), _encode(encoders[second], batch, second))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            total, count = total + loss.item() * batch["label"].shape[0], count + batch["label"].shape[0]
        test_emb, test_labels = embed(encoders, eval_test, device)
        train_emb, train_labels = embed(encoders, eval_train, device)
        record = {
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            **retrieval_metrics(test_emb[first], test_emb[second], names=(first, second), labels=test_labels),
            f"zero_shot_{first}_accuracy": _zero_shot(test_emb[first], train_emb[second], train_labels, test_labels, classes),
        }
        if hasattr(loss_fn, "logit_scale"):
            record["temperature"] = float(1 / loss_fn.logit_scale.detach().exp())
        history.append(record)
        say(
            f"epoch {epoch + 1:3d}/{settings.epochs}  loss {record['train_loss']:.4f}  "
            f"{first}->{second} R@1 {record[f'{first}->{second} R@1']:.3f} R@5 {record[f'{first}->{second} R@5']:.3f}  "
            f"{second}->{first} R@1 {record[f'{second}->{first} R@1']:.3f}  zero-shot {record[f'zero_shot_{first}_accuracy']:.3f}"
        )
        save_checkpoint(run_dir, epoch + 1, nn.ModuleDict({"encoders": encoders, "loss": loss_fn}), {"epoch": epoch + 1, "history": history}, keep=settings.keep_checkpoints)
    summary = {"run_dir": str(run_dir), "final": history[-1], "train_seconds": time.perf_counter() - started, "history": history}
    write_text_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2))
    return summary
