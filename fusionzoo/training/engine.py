"""The training loop: one function, :func:`train`, from a config to a run directory.

AdamW with linear warm-up and cosine decay (per step), gradient clipping, modality dropout, bf16
autocast on CUDA (float32 on the CPU), optional ``torch.compile``, per-epoch accuracy / macro-F1 /
loss on the test split, a JSONL log, ``metrics.json``, a training-curve PNG, and atomic checkpoints.

Determinism: the global RNG is reseeded from ``(seed, epoch, rank)`` at the start of every epoch
and the data order is a function of ``(seed, epoch)``, so a run resumed from the checkpoint of
epoch ``e`` continues exactly as the uninterrupted run would (bitwise on the CPU).

Under ``torchrun`` (``WORLD_SIZE > 1``) it initialises ``torch.distributed`` (NCCL on GPU, gloo on
CPU), wraps the model in ``DistributedDataParallel``, shards the training data with a
``DistributedSampler``, all-reduces the training metrics, and lets rank 0 alone write files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from fusionzoo.atomic import pyplot, save_figure_atomic, write_text_atomic
from fusionzoo.config import ConfigError, build_from_section, build_model, load_config
from fusionzoo.data.loader import make_loader
from fusionzoo.fusion.dropout import ModalityDropout
from fusionzoo.layers.masking import masked_mean
from fusionzoo.losses.distillation import DistillationLoss
from fusionzoo.losses.multitask import MultiTaskLoss
from fusionzoo.registry import DATASETS
from fusionzoo.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fusionzoo.training.evaluate import evaluate, move_batch
from fusionzoo.training.settings import TrainSettings
from fusionzoo.transfer import apply_strategy, freeze, load_partial, param_groups

__all__ = ["train", "build_datasets", "num_classes_of", "default_run_dir"]


def default_run_dir(cfg: Mapping[str, Any]) -> Path:
    name = cfg.get("name") or Path(str(cfg.get("_origin", "run"))).stem
    return Path("runs") / name


def build_datasets(cfg: Mapping[str, Any]) -> tuple[Any, Any]:
    """The ``data:`` section built twice, with the derived ``split="train"`` and ``split="test"``."""
    origin = cfg.get("_origin", "<dict>")
    if "data" not in cfg:
        raise ConfigError(f"{origin}: data: required to train")
    section = cfg["data"]
    return (
        build_from_section(DATASETS, section, "data", origin, split="train"),
        build_from_section(DATASETS, section, "data", origin, split="test"),
    )


def num_classes_of(dataset: Any) -> int:
    if hasattr(dataset, "num_classes"):
        return int(dataset.num_classes)
    if hasattr(dataset, "labels"):
        return int(max(dataset.labels)) + 1
    return int(max(int(dataset[i]["label"]) for i in range(len(dataset)))) + 1


def _check_compatible(cfg: Mapping[str, Any], model: nn.Module, dataset: Any) -> int:
    origin = cfg.get("_origin", "<dict>")
    classes = num_classes_of(dataset)
    if model.out_dim != classes:
        raise ConfigError(f"{origin}: model.head.out_dim: the data has {classes} classes, the head outputs {model.out_dim}")
    vocab = getattr(dataset, "vocab", None)
    for m, enc in model.encoders.items():
        size = getattr(enc, "vocab_size", None)
        if vocab is not None and size is not None and size < len(vocab):
            raise ConfigError(f"{origin}: model.encoders.{m}.vocab_size: {size} is smaller than the data's vocabulary ({len(vocab)})")
    return classes


def _setup_distributed(settings: TrainSettings) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _prepare_transfer(cfg, settings: TrainSettings, model: nn.Module, run_dir: Path | None, say, world: int):
    """``train.init_from`` (load, then freeze) and ``train.strategy``; returns a gradual unfreezer or None."""
    origin = cfg.get("_origin", "<dict>")
    init = settings.init_from
    if init is not None:
        path = Path(init["path"])
        if path.is_dir():
            from fusionzoo.training.robustness import resolve_checkpoint

            path = resolve_checkpoint(path)[1] / "model.safetensors"
        try:
            report = load_partial(model, path, key_map=init.get("key_map"), strict_shapes=init.get("strict_shapes", False))
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{origin}: train.init_from: {e}") from e
        say(f"init_from {path}:\n{report}")
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "init_report.txt").write_text(f"{path}\n{report}\n")
        if init.get("freeze"):
            freeze(model, init["freeze"])
    if settings.strategy == "gradual" and world > 1:
        raise ConfigError(f"{origin}: train.strategy: gradual unfreezing is not supported under torchrun (DDP fixes its parameter set at start)")
    return apply_strategy(model, settings.strategy) if settings.strategy != "finetune" else None


class Objective:
    """The training loss: cross-entropy on the labelled samples (label -1 = unlabelled), plus a
    distillation term from a teacher run (``train.distill``) or per-modality auxiliary heads combined
    by a multi-task loss (``train.aux_heads``). Its extra modules train with the model and are saved
    in ``state.pt``."""

    def __init__(self, cfg, settings: TrainSettings, model: nn.Module, classes: int, device: torch.device, world: int) -> None:
        origin = cfg.get("_origin", "<dict>")
        self.model, self.smoothing = model, settings.label_smoothing
        self.teacher = self.distill = self.aux = self.multitask = None
        if (settings.distill or settings.aux_heads) and world > 1:
            raise ConfigError(f"{origin}: train.distill / train.aux_heads: not supported under torchrun yet")
        if settings.distill:
            from fusionzoo.training.robustness import load_run

            self.teacher = load_run(settings.distill["teacher"]).to(device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if self.teacher.out_dim != classes:
                raise ConfigError(f"{origin}: train.distill.teacher: it predicts {self.teacher.out_dim} classes, the data has {classes}")
            self.alpha = float(settings.distill.get("alpha", 0.5))
            self.distill = DistillationLoss(temperature=float(settings.distill.get("temperature", 4.0)), alpha=1.0)
        if settings.aux_heads is not None:
            self.aux = nn.ModuleDict({m: nn.Linear(enc.out_dim, classes) for m, enc in model.encoders.items()}).to(device)
            aux = settings.aux_heads
            self.multitask = MultiTaskLoss(
                tasks=["fused", *model.modalities], weighting=aux.get("weighting", "uncertainty"),
                weights=aux.get("weights"), temperature=aux.get("temperature", 2.0),
            ).to(device)
        self.epoch_losses: dict[str, list[Tensor]] = {}

    def extra_parameters(self) -> list[nn.Parameter]:
        mods = [m for m in (self.aux, self.multitask) if m is not None]
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def _ce(self, logits, labels, mask=None):
        keep = labels >= 0 if mask is None else (labels >= 0) & mask
        per = F.cross_entropy(logits.float(), labels.clamp(min=0), label_smoothing=self.smoothing, reduction="none")
        return torch.where(keep, per, 0.0).sum() / keep.sum().clamp(min=1)

    def __call__(self, net: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        labels = batch["label"]
        if self.distill is None and self.aux is None:
            logits = net(batch)
            return logits, self._ce(logits, labels)
        if self.distill is not None:
            logits = net(batch)
            with torch.no_grad():
                teacher = self.teacher(batch)
            soft = self.distill(logits.float(), teacher.float())
            hard = self._ce(logits, labels)
            self._note({"hard": hard, "soft": soft})
            return logits, self.alpha * soft + (1 - self.alpha) * hard
        features, present = self.model.encode(batch)
        logits = self.model.head(self.model.fuse(features, present))
        losses = {"fused": self._ce(logits, labels)}
        for m in self.model.modalities:
            if m not in features:
                losses[m] = logits.new_zeros(())
                continue
            f, p = features[m], present.get(m)
            if f.dim() == 3:  # tokens: pool the present ones
                mask = p if p is not None else torch.ones(f.shape[:2], dtype=torch.bool, device=f.device)
                f, p = masked_mean(f, mask, dim=1), mask.any(dim=1)
            losses[m] = self._ce(self.aux[m](f), labels, p)
        self._note(losses)
        return logits, self.multitask(losses)

    def _note(self, values: dict[str, Tensor]) -> None:
        for k, v in values.items():
            self.epoch_losses.setdefault(k, []).append(v.detach())

    def _means(self) -> dict[str, float]:
        return {k: torch.stack(v).mean().item() for k, v in self.epoch_losses.items() if v}

    def end_epoch(self) -> None:
        if self.multitask is not None and self.epoch_losses:
            self.multitask.end_epoch(self._means())

    def log(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"{k}_loss": v for k, v in self._means().items()}
        if self.multitask is not None:
            out["task_weights"] = self.multitask.weights()
        self.epoch_losses = {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {name: mod.state_dict() for name, mod in (("aux", self.aux), ("multitask", self.multitask)) if mod is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, mod in (("aux", self.aux), ("multitask", self.multitask)):
            if mod is not None and name in state:
                mod.load_state_dict(state[name])


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _weights_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters. Buffers (BatchNorm running statistics) are left out: DDP broadcasts
    rank 0's at every forward, and each rank then updates its own copy during that forward."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _plot(history: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train"]["loss"] for h in history], label="train")
    ax1.plot(epochs, [h["test"]["loss"] for h in history], label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [h["train"]["accuracy"] for h in history], label="train")
    ax2.plot(epochs, [h["test"]["accuracy"] for h in history], label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend()
    save_figure_atomic(fig, path)
    return True


def train(
    config: str | Path | Mapping[str, Any],
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    overrides: Iterable[str] = (),
    log: bool = True,
) -> dict[str, Any]:
    """Train the model a config describes; returns the summary also written to ``metrics.json``."""
    cfg = load_config(config, overrides) if not (isinstance(config, Mapping) and "_origin" in config) else dict(config)
    origin = cfg["_origin"]
    settings = TrainSettings.from_dict(cfg.get("train"), origin)
    seed = int(cfg.get("seed", 0))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if not resume and not overwrite and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to replace it")

    rank, world, device = _setup_distributed(settings)
    is_main = rank == 0
    say = print if (log and is_main) else (lambda *a, **k: None)
    if overwrite and not resume and is_main:
        for old in ("checkpoints", "eval"):
            shutil.rmtree(run_dir / old, ignore_errors=True)

    torch.manual_seed(seed)  # identical initial weights on every rank
    train_set, test_set = build_datasets(cfg)
    model = build_model(cfg)
    classes = _check_compatible(cfg, model, train_set)
    model.to(device)
    train_loader = make_loader(train_set, settings.batch_size, shuffle=True, num_workers=settings.num_workers, seed=seed, distributed=world > 1)
    test_loader = make_loader(test_set, max(settings.batch_size, 256), num_workers=settings.num_workers, distributed=False)
    steps = len(train_loader)
    unfreezer = _prepare_transfer(cfg, settings, model, run_dir if is_main else None, say, world)
    objective = Objective(cfg, settings, model, classes, device, world)
    groups = param_groups(model, settings.lr, settings.lr_mult, settings.weight_decay)
    if objective.extra_parameters():
        groups.append({"params": objective.extra_parameters(), "lr": settings.lr, "lr_mult": 1.0, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(round(settings.warmup_epochs * steps), settings.epochs * steps)
    )
    history: list[dict] = []
    start_epoch = 0
    if resume and checkpoint is not None:
        state = load_checkpoint(checkpoint, model)
        objective.load_state_dict(state.get("objective", {}))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        say(f"resuming {run_dir} after epoch {start_epoch}")
    elif resume:
        say(f"no checkpoint in {run_dir}; starting from scratch")

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {k: v for k, v in cfg.items() if k != "_origin"}
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        # The log restarts from what the checkpoint knows, so epochs after it are not duplicated.
        write_text_atomic(run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    if settings.compile:
        net = torch.compile(net)
    dropout = ModalityDropout(settings.modality_dropout, settings.min_present) if settings.modality_dropout > 0 else None
    autocast = device.type == "cuda" and settings.amp
    show = settings.progress if settings.progress is not None else (sys.stderr.isatty() and not os.environ.get("CI"))

    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        torch.manual_seed(seed + 1_000_003 * (epoch + 1) + 7919 * rank)
        if unfreezer is not None:
            unfreezer.step(epoch)
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        else:
            train_loader.generator.manual_seed(seed + epoch)
        net.train()
        if dropout is not None:
            dropout.train()
        # loss sum, correct, labelled count, all samples; kept on the device: one host sync per epoch
        totals = torch.zeros(4, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not (show and is_main), leave=False)
        for batch in bar:
            batch = move_batch(batch, device)
            if dropout is not None:
                feats = {m: batch[m] for m in model.modalities if m in batch}
                batch["present"] = dropout(feats, {m: p for m, p in batch["present"].items() if m in feats})
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits, loss = objective(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            labelled = batch["label"] >= 0
            n = labelled.sum()
            correct = ((logits.argmax(1) == batch["label"]) & labelled).sum()
            totals += torch.stack([loss.detach() * n, correct, n, n.new_tensor(labelled.numel())]).double()
            if not bar.disable:  # the progress bar is the only per-step reader
                bar.set_postfix(loss=f"{loss.item():.3f}", sps=f"{totals[3].item() / (time.perf_counter() - t0):.0f}")
        if world > 1:
            dist.all_reduce(totals)
        train_time = time.perf_counter() - t0
        test_metrics = evaluate(model, test_loader, classes, device)
        objective.end_epoch()
        totals = totals.cpu()
        seen = max(totals[2].item(), 1.0)
        record = {
            "epoch": epoch + 1,
            "train": {"loss": totals[0].item() / seen, "accuracy": totals[1].item() / seen, **objective.log()},
            "test": test_metrics,
            "lr": scheduler.get_last_lr()[0],
            "epoch_seconds": train_time,
            "samples_per_s": totals[3].item() / train_time,
        }
        history.append(record)
        say(
            f"epoch {epoch + 1:3d}/{settings.epochs}  train loss {record['train']['loss']:.4f} acc {record['train']['accuracy']:.3f}"
            f"  test loss {test_metrics['loss']:.4f} acc {test_metrics['accuracy']:.3f} f1 {test_metrics['macro_f1']:.3f}"
            f"  {record['samples_per_s']:.0f} samples/s"
        )
        if is_main:
            with (run_dir / "log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            state = {
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "objective": objective.state_dict(),
            }
            save_checkpoint(run_dir, epoch + 1, model, state, keep=settings.keep_checkpoints)

    digest = _weights_digest(model)
    digests = [digest]
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, digest)
    summary = {
        "run_dir": str(run_dir),
        "epochs": settings.epochs,
        "world_size": world,
        "device": str(device),
        "final": history[-1] if history else None,
        "best_test_accuracy": max((h["test"]["accuracy"] for h in history), default=None),
        "train_seconds": time.perf_counter() - started,
        "weights_sha256": digest,
        "weights_identical_across_ranks": len(set(digests)) == 1,
    }
    if is_main:
        write_text_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2))
        if history:
            _plot(history, run_dir / "curves.png")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
