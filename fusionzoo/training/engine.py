"""The training loop: one function, :func:`train`, from a config to a run directory.

Every kind of run goes through it: classification (a loss from ``LOSSES``), distillation from a
teacher run, auxiliary heads with multi-task weighting, and cross-modal alignment; what differs lives
in :mod:`~fusionzoo.training.objectives`. An optimizer from ``OPTIMIZERS`` (AdamW by default) with
linear warm-up and cosine decay per step, gradient clipping, modality dropout, bf16 autocast on CUDA
(float32 on the CPU), optional ``torch.compile``, a JSONL log, ``metrics.json``, a training-curve
PNG, and atomic checkpoints of one resumable :class:`~fusionzoo.training.state.TrainState`.

Honest evaluation: every epoch is evaluated on the ``val`` split, which picks ``checkpoints/best``
(:class:`~fusionzoo.training.selection.Selection`, ``train.select_metric``) and drives optional
early stopping; the ``test`` split is evaluated once, after the last epoch, on the selected
checkpoint (``train.select``: ``best`` or ``last``). Nothing selects on, stops on or logs test.

Under ``torchrun`` (``WORLD_SIZE > 1``) it initialises ``torch.distributed`` (NCCL on GPU, gloo on
CPU), wraps model and objective in ``DistributedDataParallel``, shards the training data with a
``DistributedSampler``, all-reduces the training statistics, and lets rank 0 alone write files.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import IterableDataset
from tqdm import tqdm

from fusionzoo.atomic import atomic_path, pyplot, save_figure_atomic, strict_json, write_json_atomic, write_text_atomic
from fusionzoo.config import (
    ExperimentConfig,
    build_dataset,
    build_from_section,
    build_model,
    check_input_sizes,
    check_model_fits_data,
    data_vocabularies,
    load_config,
)
from fusionzoo.data.frontend_cache import FrontendCache
from fusionzoo.data.sources import is_table, read_source, write_parquet
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.audio import LogMelFrontEnd
from fusionzoo.encoders.base import preprocessors
from fusionzoo.encoders.text import attach_vocabularies
from fusionzoo.fusion.dropout import ModalityDropout
from fusionzoo.models.saved_encoders import OVERRIDES_FILE, load_encoder_overrides, save_encoders
from fusionzoo.optim import warmup_cosine
from fusionzoo.errors import CheckpointError, TrainingDiverged
from fusionzoo.registry import OPTIMIZERS
from fusionzoo.training.checkpoint import (
    DATA_STATE,
    load_data_state,
    load_checkpoint,
    load_model_weights,
    load_run_config,
    resolve_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from fusionzoo.training.runfolder import check_folder, check_resume_config, claim, drop_stash, restore_stash, stash_run
from fusionzoo.training.evaluate import move_batch
from fusionzoo.training.feature_cache import cache_datasets, cacheable_modalities
from fusionzoo.training.loggers import LogContext, RunLoggers, build_loggers, log_identity
from fusionzoo.training.objectives import Objective, TrainStep, build_objective
from fusionzoo.training.selection import Selection
from fusionzoo.training.state import TrainState
from fusionzoo.transfer import L2SP, GradualUnfreezer, apply_strategy, fix_frozen_encoders, freeze, load_partial, param_groups

__all__ = ["train", "default_run_dir"]


def default_run_dir(cfg: ExperimentConfig) -> Path:
    return Path("runs") / cfg.name


@dataclass
class _Run:
    """What one call of :func:`train` works with, besides the resumable state."""

    cfg: ExperimentConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    say: Callable[..., None]
    loaders: dict[str, Any]
    objective: Objective
    selection: Selection
    unfreezer: GradualUnfreezer | None = None
    init_report: str | None = None
    data_files: dict[str, str] | None = None  # the data's fitted state and skipped-row report, by file name
    regularizer: L2SP | None = None
    loggers: RunLoggers | None = None  # rank 0's experiment trackers (train.loggers)
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    test: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    overrides: Iterable[str] = (),
    log: bool = True,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    test: bool = True,
    log_as: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train what a config describes; returns the summary also written to ``metrics.json``.

    ``on_epoch(record)`` is called after each epoch's checkpoint is written (``fusionzoo tune``
    reports the validation metric to its pruner there; what it raises ends the run). ``test=False``
    leaves the test split unevaluated (a tuning trial selects on validation alone). ``log_as``:
    ``{experiment, run, tags}`` for ``train.loggers`` (default: the config's name, the folder's)."""
    cfg = load_config(config, overrides)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    check_folder(run_dir, resume, overwrite)  # fail fast; checked again under the lock
    run, state = _set_up(cfg, run_dir, log, resume)  # everything is built and validated before a file changes
    run.on_epoch, run.test = on_epoch, test
    with claim(run_dir) if run.is_main else nullcontext():
        if run.is_main:
            check_folder(run_dir, resume, overwrite)
        if resume:
            _restore(run, state)
        # --overwrite: the old run is kept aside until the new one has its first checkpoint
        stash = stash_run(run_dir) if overwrite and not resume and run.is_main else None
        try:
            _write_run_files(run, state)
            if run.is_main and cfg.train.loggers:
                experiment, name, tags = log_identity(cfg.name, run_dir, log_as)
                resumed = state.scheduler.last_epoch if resume else None
                resolved = {**saved_config(cfg, run_dir), "train": dataclasses.asdict(cfg.train)}  # every training default written out
                run.loggers = build_loggers(cfg.train.loggers, LogContext(run_dir, resolved, experiment, name, tags, resumed))
            step = _wrap(run, state)
            started = time.perf_counter()
            for epoch in range(state.epoch, cfg.train.epochs):
                if run.selection.should_stop(state.history):
                    break
                record = _train_epoch(run, state, step, epoch)
                record["val"] = _validate(run, state)
                _end_epoch(run, state, record)
                drop_stash(stash)
                stash = None
        except BaseException:
            if stash is not None:
                restore_stash(run_dir, stash)
            if run.loggers is not None:
                run.loggers.close()
            raise
        drop_stash(stash)
        # DDP's reducer holds the process group: freed after the group is destroyed, its destructor
        # joins gloo threads while holding the GIL they wait for (a rare hang at exit). Free it first.
        del step
        if run.world > 1:
            gc.collect()  # its hooks form reference cycles
        return _finish(run, state, time.perf_counter() - started)


def _set_up(cfg: ExperimentConfig, run_dir: Path, log: bool, resume: bool) -> tuple[_Run, TrainState]:
    """Processes, data, model, transfer, objective, optimizer and schedule."""
    settings = cfg.train
    rank, world, device = _setup_distributed(settings.device)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    datasets, data_files = _datasets(cfg, run_dir if resume else None)
    # A resumed run rebuilds its encoders from the preprocessing it saved, as eval does.
    model = build_model(cfg, load_encoder_overrides(run_dir) if resume else None)
    classes = check_model_fits_data(cfg, model, datasets["train"])
    for split in datasets.values():
        check_input_sizes(cfg, model, split)
    attach_vocabularies(model.encoders, data_vocabularies(datasets["train"], model.encoders))
    for key in ("cache_frontend", "feature_cache"):
        if getattr(settings, key) not in (False, "none") and isinstance(datasets["train"], IterableDataset):
            raise cfg.error(f"train.{key}", f"caches by sample index, and {cfg.data['name']} data streams (no index); use a map-style source (manifest, Parquet)")
    if settings.cache_frontend:
        datasets = cache_frontends(cfg, model, datasets)
    model.to(device)
    say = print if (log and rank == 0) else (lambda *a, **k: None)
    unfreezer, init_report, regularizer = _prepare_transfer(cfg, model, say, world)
    if unfreezer is None:
        fix_frozen_encoders(model)
    if settings.feature_cache != "none":
        datasets = _cache_features(cfg, model, datasets, device, say)
    objective = build_objective(cfg, model, classes, device, task=getattr(datasets["train"], "task", "multiclass"))
    preprocess = preprocessors(model.encoders)
    loader = make_loader(
        datasets["train"], settings.batch_size, shuffle=True, num_workers=settings.num_workers, seed=cfg.seed,
        distributed=world > 1, drop_last=objective.drop_last, preprocess=preprocess,
    )
    eval_batch = max(settings.batch_size, 256)
    splits = ("train", "val", "test") if objective.needs_train_split else ("val", "test")
    loaders = {
        s: make_loader(datasets[s], eval_batch, num_workers=settings.num_workers, distributed=False, preprocess=preprocess) for s in splits
    }
    optimizer = _build_optimizer(cfg, model, objective, regularizer)
    steps = len(loader)
    schedule = warmup_cosine(round(settings.warmup_epochs * steps), settings.epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema), use_buffers=True) if settings.ema > 0 else None
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, objective=objective, loader=loader, seed=cfg.seed, ema=ema)
    run = _Run(
        cfg=cfg, run_dir=run_dir, rank=rank, world=world, device=device, say=say, loaders=loaders, objective=objective,
        selection=_selection(cfg, objective), unfreezer=unfreezer, init_report=init_report, data_files=data_files,
        regularizer=regularizer,
    )
    return run, state


def _datasets(cfg: ExperimentConfig, resumed: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The three splits, and the files they leave in the run folder. What a dataset fits on its
    training split (a vocabulary, a label list: its ``fitted`` state) is handed to ``val`` and
    ``test`` and saved as ``data_state.json``; a resumed run reads it back, so the same ids mean the
    same words and classes. Rows a dataset skipped (``on_error: skip``) go to ``data_report.json``."""
    fitted = load_data_state(resumed) if resumed is not None else None
    train_set = build_dataset(cfg, "train", fitted)
    fitted = getattr(train_set, "fitted", None)
    datasets = {"train": train_set, "val": build_dataset(cfg, "val", fitted), "test": build_dataset(cfg, "test", fitted)}
    files = {}
    if fitted is not None:
        files[DATA_STATE] = json.dumps(fitted, indent=1)
    skipped = {s: d.skipped for s, d in datasets.items() if getattr(d, "skipped", None)}
    if skipped:
        files["data_report.json"] = json.dumps({"skipped_rows": {s: len(rows) for s, rows in skipped.items()}, "rows": skipped}, indent=1)
    tasks = {s: getattr(d, "task", "multiclass") for s, d in datasets.items()}
    if len(set(tasks.values())) > 1:
        raise cfg.error("data", f"the splits disagree on the task: {tasks}")
    fingerprints = {s: d.fingerprint() for s, d in datasets.items() if hasattr(d, "fingerprint")}
    if fingerprints:
        _check_fingerprints(resumed, fingerprints)
        files[FINGERPRINTS] = json.dumps(fingerprints, indent=1)
    return datasets, files


FINGERPRINTS = "data_fingerprint.json"
#: A run trained on a table given in memory keeps it as this Parquet file (its config names it).
TABLE_COPY = "data.parquet"


def saved_config(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """The config as ``config.yaml`` holds it: a ``data.path`` given as a DataFrame or a Hugging
    Face dataset is the run's Parquet copy of it (:data:`TABLE_COPY`)."""
    data = cfg.data or {}
    if not is_table(data.get("path")):
        return cfg.to_dict()
    raw = {k: v for k, v in cfg.raw.items() if k != "data"}
    saved = copy.deepcopy(raw)
    saved["data"] = {**{k: copy.deepcopy(v) for k, v in data.items() if k != "path"}, "path": str((Path(run_dir) / TABLE_COPY).resolve())}
    if "root" not in saved["data"]:  # relative file paths in the table resolved where they were
        saved["data"]["root"] = str(Path.cwd())
    return saved
#: The test split's outputs and labels at the selected checkpoint, in the loader's order.
PREDICTIONS = "test_predictions.safetensors"


def _check_fingerprints(resumed: Path | None, fingerprints: Mapping[str, str]) -> None:
    """``--resume`` on data that changed since the run started is refused: its best epoch was
    selected on the old validation split, its loss on the old training split."""
    saved = resumed / FINGERPRINTS if resumed is not None else None
    if saved is None or not saved.is_file():
        return
    changed = [s for s, fp in json.loads(saved.read_text()).items() if fingerprints.get(s, fp) != fp]
    if changed:
        raise ValueError(
            f"{resumed}: --resume: the data of the {', '.join(changed)} split{'s' if len(changed) > 1 else ''} changed since "
            "the run started (the manifest or a file it names): its checkpoints and best epoch belong to the old data. "
            "Restore the data, or start a new run (--overwrite or another --run-dir)"
        )


def _cache_features(cfg: ExperimentConfig, model: nn.Module, datasets: dict[str, Any], device: torch.device, say) -> dict[str, Any]:
    """``train.feature_cache``: the splits with every frozen, unaugmented encoder's output cached."""
    if cfg.kind != "model":
        raise cfg.error("train.feature_cache", "caches a classifier's frozen encoders (a model: config)")
    if cfg.train.distill is not None:
        raise cfg.error("train.feature_cache", "cannot be combined with train.distill (the teacher reads the raw inputs)")
    if cfg.train.strategy == "gradual":
        raise cfg.error("train.feature_cache", "strategy gradual unfreezes the encoders it freezes; nothing stays fixed to cache")
    modalities = cacheable_modalities(model, datasets["train"], say)
    if not modalities:
        say("train.feature_cache: no encoder is frozen, so none is cached (freeze one with strategy: linear_probe or init_from.freeze)")
        return datasets
    return cache_datasets(cfg, model, datasets, modalities, device=device, say=say)


def cache_frontends(cfg: ExperimentConfig, model: nn.Module, datasets: dict[str, Any]) -> dict[str, Any]:
    """Every split wrapped in a :class:`FrontendCache` per waveform encoder with a log-mel front end."""
    audio = {m: enc.frontend for m, enc in getattr(model, "encoders", {}).items()
             if isinstance(getattr(enc, "frontend", None), LogMelFrontEnd) and getattr(enc, "input", None) == "waveform"}
    if not audio:
        raise cfg.error("train.cache_frontend", "no encoder of this model reads waveforms through a log-mel front end")
    for m, frontend in audio.items():
        datasets = {split: FrontendCache(d, m, frontend) for split, d in datasets.items()}
    return datasets


def _selection(cfg: ExperimentConfig, objective: Objective) -> Selection:
    metric = cfg.train.select_metric or objective.default_metric
    if metric not in objective.metric_names:
        raise cfg.error("train.select_metric", f"unknown metric {metric!r} for this run; choose one of {list(objective.metric_names)}")
    return Selection.for_metric(metric, cfg.train.early_stopping)


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _prepare_transfer(cfg: ExperimentConfig, model: nn.Module, say, world: int) -> tuple[GradualUnfreezer | None, str | None, L2SP | None]:
    """``train.init_from`` (load what ``include`` / ``exclude`` select, then freeze), ``train.regularize``
    and ``train.strategy``; returns a gradual unfreezer (or None), the load report for
    ``init_report.txt`` (or None) and the L2-SP regulariser over the loaded parameters (or None)."""
    settings = cfg.train
    init, report_text, regularizer = settings.init_from, None, None
    if init is not None:
        path = Path(init["path"])
        try:
            if path.is_dir():
                checkpoint = resolve_checkpoint(path)[1]
                verify_checkpoint(checkpoint)
                path = checkpoint / "model.safetensors"
            report = load_partial(
                model, path, key_map=init.get("key_map"), strict_shapes=init.get("strict_shapes", False),
                include=init.get("include"), exclude=init.get("exclude", ()),
            )
        except (FileNotFoundError, ValueError) as e:
            raise cfg.error("train.init_from", str(e)) from e
        if not report.loaded and not init.get("allow_empty", False):
            raise cfg.error(
                "train.init_from", f"no tensor of {path} matches the model (check key_map, include, exclude; allow_empty: true to accept):\n{report}"
            )
        say(f"init_from {path}:\n{report}")
        report_text = f"{path}\n{report}\n"
        if init.get("freeze"):
            freeze(model, init["freeze"])
        if settings.regularize and settings.regularize.get("l2sp"):
            parameters = {n for n, _ in model.named_parameters()}
            regularizer = L2SP(model, [k for k in report.loaded if k in parameters], settings.regularize["l2sp"])
    if settings.strategy == "gradual" and world > 1:
        raise cfg.error("train.strategy", "gradual unfreezing is not supported under torchrun (DDP fixes its parameter set at start)")
    unfreezer = apply_strategy(model, settings.strategy, settings.gradual_groups) if settings.strategy != "finetune" else None
    return unfreezer, report_text, regularizer


def _build_optimizer(cfg: ExperimentConfig, model: nn.Module, objective: Objective, regularizer: L2SP | None) -> torch.optim.Optimizer:
    """``train.optimizer`` over the model's groups (``lr_mult``, weight-decay exclusions: also the
    parameters L2-SP holds near their source values) plus the objective's own parameters (no weight
    decay: heads of the objective, task weights, logit scales)."""
    s = cfg.train
    no_decay = regularizer.names if regularizer is not None else ()
    groups = param_groups(model, s.lr, s.lr_mult, s.weight_decay, decay_norms_and_biases=s.decay_norms_and_biases, no_decay=no_decay)
    extra = [p for p in objective.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": s.lr, "lr_mult": 1.0, "weight_decay": 0.0})
    return build_from_section(OPTIMIZERS, s.optimizer, "train.optimizer", cfg.origin, params=groups, lr=s.lr, weight_decay=s.weight_decay)


def _restore(run: _Run, state: TrainState) -> None:
    """``--resume``: the same config (but for :data:`~fusionzoo.training.runfolder.RESUMABLE` keys),
    then the newest intact checkpoint; a checkpoint passed over is a warning naming it."""
    saved = run.run_dir / "config.yaml"
    if saved.is_file():
        check_resume_config(load_run_config(run.run_dir).to_dict(), saved_config(run.cfg, run.run_dir), run.run_dir)
    failed: tuple[Path, ...] = ()
    unloadable: list[str] = []
    while True:
        checkpoint, skipped = resume_checkpoint(run.run_dir, exclude=failed)
        if checkpoint is None:
            break
        try:
            restored = load_checkpoint(checkpoint, state.evaluated)
            break
        except CheckpointError as e:  # verified, but its state does not load: passed over as a corrupted one is
            failed += (checkpoint,)
            unloadable.append(f"skipping {checkpoint}: {e}")
    if run.is_main:
        for line in unloadable + skipped:
            warnings.warn(f"--resume: {line}", stacklevel=3)
    if checkpoint is None:
        run.say(f"no checkpoint in {run.run_dir}; starting from scratch")
        return
    state.load_state_dict(restored)
    run.say(f"resuming {run.run_dir} after epoch {state.epoch}")


def _write_run_files(run: _Run, state: TrainState) -> None:
    if not run.is_main:
        return
    table = (run.cfg.data or {}).get("path")
    if is_table(table):  # a DataFrame or a Hugging Face dataset given in Python: the run keeps a copy
        write_parquet(read_source(table), run.run_dir / TABLE_COPY)
    write_text_atomic(run.run_dir / "config.yaml", yaml.safe_dump(saved_config(run.cfg, run.run_dir), sort_keys=False))
    if run.init_report is not None:
        write_text_atomic(run.run_dir / "init_report.txt", run.init_report)
    for name, text in (run.data_files or {}).items():
        write_text_atomic(run.run_dir / name, text)
    if not (run.run_dir / OVERRIDES_FILE).is_file():  # kept as first written: a resume reads it
        save_encoders(state.model.encoders, run.run_dir)
    # The log restarts from what the checkpoint knows, so epochs after it are not duplicated.
    write_text_atomic(run.run_dir / "log.jsonl", "".join(strict_json(r) + "\n" for r in state.history))


def _wrap(run: _Run, state: TrainState) -> nn.Module:
    """Model and objective as one module, under DDP and ``torch.compile`` when asked."""
    step: nn.Module = TrainStep(state.model, run.objective, run.regularizer)
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        step = nn.parallel.DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=True)
    if run.cfg.train.compile:
        step = torch.compile(step)
    return step


def _train_epoch(run: _Run, state: TrainState, step: nn.Module, epoch: int) -> dict[str, Any]:
    """One pass over the training data; returns the epoch's record without its evaluation. A
    non-finite loss stops the run at the end of the epoch, before its checkpoint is written
    (``train.on_nonfinite: stop``), or its batch is skipped (``skip_batch``)."""
    settings, model = run.cfg.train, state.model
    state.begin_epoch(epoch, run.rank)
    if run.unfreezer is not None:
        run.unfreezer.step(epoch)
    step.train()
    dropout = ModalityDropout(settings.modality_dropout, settings.min_present) if settings.modality_dropout > 0 else None
    autocast = run.device.type == "cuda" and settings.amp
    trained = [p for p in step.parameters() if p.requires_grad]
    totals = torch.zeros(len(run.objective.stat_names), dtype=torch.float64, device=run.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=run.device)  # no host sync per step
    skipped = 0
    bar = tqdm(state.loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not _show_progress(run), leave=False)
    t0 = time.perf_counter()
    for i, batch in enumerate(bar):
        batch = move_batch(batch, run.device)
        if dropout is not None:
            given = {m: batch["present"][m] for m in model.modalities if m in batch["present"]}  # [b] each: the batch size and device
            batch["present"] = dropout(given, given)
        buffers = [b.detach().clone() for b in model.buffers()] if settings.on_nonfinite == "skip_batch" else None
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, stats = step(batch)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if buffers is not None and not _finite(loss, trained):
            for b, saved in zip(model.buffers(), buffers):  # BatchNorm statistics as before the batch
                b.copy_(saved)
            skipped += 1  # neither an optimizer nor a schedule step
            continue
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_(trained, settings.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        state.step_done()
        totals += stats
        if run.loggers and state.scheduler.last_epoch % settings.log_every == 0:  # one host sync per logged step
            run.loggers.log_step(state.scheduler.last_epoch, {"loss": loss.item(), "lr": state.scheduler.get_last_lr()[0]})
        if not bar.disable:  # the progress bar is the only per-step reader
            bar.set_postfix(loss=f"{loss.item():.3f}")
    _stop_if_nonfinite(run, first_bad, epoch)
    if run.world > 1:
        dist.all_reduce(totals)
    seconds = time.perf_counter() - t0
    why = run.objective.learned_nothing(totals.cpu())
    if why is not None:
        raise ValueError(f"{run.run_dir}: epoch {epoch + 1}: {why}; this epoch was not saved")
    train = run.objective.summarize(totals.cpu())
    run.objective.end_epoch(train)
    samples = totals[run.objective.stat_names.index("samples")].item()
    record = {"epoch": epoch + 1, "train": train, "lr": state.scheduler.get_last_lr()[0], "epoch_seconds": seconds, "samples_per_s": samples / seconds}
    return record | ({"skipped_batches": skipped} if buffers is not None else {})


def _finite(loss: Tensor, params: list[Tensor]) -> bool:
    """Whether the loss and every gradient are finite (one host sync)."""
    checks = [torch.isfinite(loss.detach()).all()] + [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all())


def _stop_if_nonfinite(run: _Run, first_bad: Tensor, epoch: int) -> None:
    if run.world > 1:
        dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
    bad = int(first_bad.item())
    if bad >= 0:
        kept = f"epoch-{epoch:03d}" if epoch else "none (this was the first epoch)"
        raise TrainingDiverged(
            f"{run.run_dir}: epoch {epoch + 1}, step {bad + 1}: the training loss is not finite; training stopped and "
            f"this epoch was not saved (last finite checkpoint: {kept}). Lower train.lr, check the inputs for NaN, "
            "or set train.on_nonfinite: skip_batch"
        )


def _show_progress(run: _Run) -> bool:
    shown = run.cfg.train.progress
    return run.is_main and (shown if shown is not None else sys.stderr.isatty() and not os.environ.get("CI"))


def _validate(run: _Run, state: TrainState) -> dict[str, Any]:
    """The epoch's validation metrics; under ``torchrun`` rank 0's (BatchNorm statistics are per
    process), so every rank makes the same selection and stopping decisions."""
    metrics = run.objective.evaluate(state.evaluated, run.loaders, "val", run.device)
    if run.world > 1:
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    metric = run.selection.metric
    if math.isnan(run.selection.value({"val": metrics})):
        why = ("it has no labelled sample" if metrics.get("n") == 0 else "mAP and micro-F1 need a positive label; it has none"
               if metric in ("mAP", "micro_f1") else "the model's outputs on it are not finite")
        raise ValueError(
            f"{run.run_dir}: the val split gives no {metric} ({why}): there is nothing to select a checkpoint on or to stop on. "
            "Label validation samples, or select on another metric (train.select_metric)"
        )
    return metrics


def _end_epoch(run: _Run, state: TrainState, record: dict[str, Any]) -> None:
    """Log the epoch, append it to ``log.jsonl`` and save the checkpoint (marked best when it is)."""
    state.history.append(record)
    state.epoch = record["epoch"]
    best = run.selection.is_best(state.history)
    mark = "  *" if best else ""
    run.say(f"epoch {state.epoch:3d}/{run.cfg.train.epochs}  {run.objective.headline(record)}  {record['samples_per_s']:.0f} samples/s{mark}")
    if run.is_main:
        with (run.run_dir / "log.jsonl").open("a") as f:
            f.write(strict_json(record) + "\n")
        save_checkpoint(run.run_dir, state.epoch, state.evaluated, state.state_dict(), keep=run.cfg.train.keep_checkpoints, best=best)
        if run.loggers:
            run.loggers.log_epoch(state.scheduler.last_epoch, record)
    if run.on_epoch is not None:
        run.on_epoch(record)


def _weights_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters. Buffers (BatchNorm running statistics) are left out: DDP broadcasts
    rank 0's at every forward, and each rank then updates its own copy during that forward."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _finish(run: _Run, state: TrainState, seconds: float) -> dict[str, Any]:
    """Evaluate ``test`` once on the selected checkpoint; write ``metrics.json`` and ``curves.png``;
    tear the process group down."""
    history, settings = state.history, run.cfg.train
    digest = _weights_digest(state.evaluated)
    digests = [digest]
    if run.world > 1:
        digests = [None] * run.world
        dist.all_gather_object(digests, digest)
    best_epoch, best_val = run.selection.best(history)
    selected = best_epoch if settings.select == "best" else state.epoch
    test = None
    if history and run.is_main and run.test:  # the only evaluation of test, on the selected weights
        if selected != state.epoch:
            load_model_weights(state.evaluated, run.run_dir / "checkpoints" / f"epoch-{selected:03d}")
        predictions: dict[str, Tensor] = {}
        test = run.objective.evaluate(state.evaluated, run.loaders, "test", run.device, predictions=predictions)
        if predictions:  # what the leaderboard's per-sample bootstrap resamples (pooled over folds)
            with atomic_path(run.run_dir / PREDICTIONS) as tmp:
                save_file({k: v.contiguous() for k, v in predictions.items()}, str(tmp), metadata={"epoch": str(selected)})
    summary = {
        "run_dir": str(run.run_dir),
        "seed": run.cfg.seed,
        "epochs": settings.epochs,
        "epochs_run": state.epoch,
        "stopped_early": state.epoch < settings.epochs,
        "world_size": run.world,
        "device": str(run.device),
        "select": settings.select,
        "select_metric": run.selection.metric,
        "best_epoch": best_epoch,
        "best_val": best_val,
        "selected_epoch": selected if history else None,
        "val": history[selected - 1]["val"] if history else None,
        "test": test,
        "last_epoch": history[-1] if history else None,
        "train_seconds": sum(h["epoch_seconds"] for h in history),  # every epoch, across resumes
        "wall_seconds": seconds,  # this call, validation and test included
        "weights_sha256": digest,
        "weights_identical_across_ranks": len(set(digests)) == 1,
    }
    if run.is_main:
        write_json_atomic(run.run_dir / "metrics.json", summary)
        if history:
            _plot(history, best_epoch, run.run_dir / "curves.png")
        if run.loggers is not None:
            checkpoint = run.run_dir / "checkpoints" / f"epoch-{selected:03d}" if history else None
            run.loggers.finish(state.scheduler.last_epoch, summary, checkpoint)
            run.loggers.close()
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _plot(history: list[dict], best_epoch: int | None, path: Path) -> None:
    """Train and validation loss, and the train and validation metrics (accuracy, R@1, mAP, F1, MAE,
    RMSE, Pearson r), with the selected epoch marked."""
    plt = pyplot()
    if plt is None:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train"]["loss"] for h in history], label="train")
    if "loss" in history[0]["val"]:
        ax1.plot(epochs, [h["val"]["loss"] for h in history], label="val")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss")
    if "accuracy" in history[0]["train"]:
        ax2.plot(epochs, [h["train"]["accuracy"] for h in history], label="train accuracy")
    for key in [k for k in history[0]["val"] if "accuracy" in k or k.endswith("R@1") or k in ("mAP", "micro_f1", "mae", "rmse", "pearson_r")]:
        ax2.plot(epochs, [h["val"][key] for h in history], label=f"val {key}")
    for ax in (ax1, ax2):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label="best val")
        ax.legend(fontsize=7)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("metric")
    save_figure_atomic(fig, path)
