"""Experiment tracking: ``train.loggers: [tensorboard, mlflow]`` (registered in ``LOGGERS``).

Every run writes ``log.jsonl``, the record; a logger sends the same numbers to a tracking tool:
the training loss and learning rate every ``train.log_every`` optimizer steps (``step/loss``,
``step/lr``), each epoch's training and validation metrics (``train/*``, ``val/*``, ``epoch/*``),
the test metrics at the end (``test/*``), and the resolved config as hyper-parameters. One step
axis: the optimizer step, so an epoch's metrics sit at the step that ends it.

* ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir runs``; a compare or
  tune folder groups its runs by folder). A resumed run reopens the folder with ``purge_step`` at
  the first step after its checkpoint, so what the interrupted run logged after it is discarded by
  TensorBoard's readers: every step is there once.
* ``mlflow``: a run in the experiment named by the config (``name``; compare: its output folder,
  tune: the study), in ``MLFLOW_TRACKING_URI`` or else the SQLite store ``./mlruns/mlflow.db``
  (artifacts in ``./mlruns/artifacts``; ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``).
  An epoch is sent after its checkpoint is written, its steps with it; the run's id is kept in
  ``RUN/mlflow.json``, so ``--resume`` continues the same MLflow run and skips the epochs it holds
  already. At the end: the test metrics, ``metrics.json``, ``config.yaml``, ``curves.png`` and the
  selected checkpoint (``log_checkpoint: false`` to leave it out) as artifacts.

Only rank 0 logs under ``torchrun``. A logger that fails (a server down, a full disk) is one
warning and is off for the rest of the run; training goes on. Register your own with
``@LOGGERS.register("name")`` on a :class:`RunLogger` subclass.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionzoo.atomic import write_json_atomic
from fusionzoo.extras import require
from fusionzoo.registry import LOGGERS

__all__ = ["RunLogger", "RunLoggers", "LogContext", "TensorBoardLogger", "MLflowLogger", "build_loggers", "flat_params"]

#: Read by :func:`build_loggers` when ``train()`` is not told: how ``compare`` names its cells' runs.
EXPERIMENT_ENV, RUN_NAME_ENV, TAGS_ENV = "FUSIONZOO_LOG_EXPERIMENT", "FUSIONZOO_LOG_RUN", "FUSIONZOO_LOG_TAGS"


@dataclass(frozen=True)
class LogContext:
    """What a logger knows of its run: the folder, the resolved config, the MLflow experiment and
    run name, tags, and the optimizer step of the checkpoint it resumes (``None``: a new run)."""

    run_dir: Path
    config: Mapping[str, Any]
    experiment: str
    run_name: str
    tags: Mapping[str, str]
    resumed_step: int | None


class RunLogger:
    """A tracking tool's side of a run. Each method gets plain numbers; ``log_epoch`` is called
    after the epoch's checkpoint is written, ``finish`` once after the test evaluation."""

    def start(self, context: LogContext) -> None:
        self.context = context

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_epoch(self, step: int, record: Mapping[str, Any]) -> None:
        pass

    def finish(self, step: int, summary: Mapping[str, Any], checkpoint: Path | None) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's record as ``{"train/loss": ..., "val/accuracy": ..., "epoch/seconds": ...}``."""
    scalars = {f"{split}/{k}": float(v) for split in ("train", "val") for k, v in (record.get(split) or {}).items() if _number(v)}
    scalars.update({"epoch/epoch": float(record["epoch"]), "epoch/lr": float(record["lr"]), "epoch/seconds": float(record["epoch_seconds"]),
                    "epoch/samples_per_s": float(record["samples_per_s"])})
    return scalars


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.003, "model.fusion.hidden_dims": "[64]"}``: scalars as
    they are, lists and ``None`` as their YAML-ish text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{path}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[path] = value
        else:
            flat[path] = json.dumps(value)
    return flat


@LOGGERS.register("tensorboard", paper="https://www.tensorflow.org/tensorboard")
class TensorBoardLogger(RunLogger):
    """TensorBoard event files in ``RUN/<subdir>`` through ``torch.utils.tensorboard``; a resume
    purges what the interrupted run logged after its checkpoint."""

    def __init__(self, subdir: str = "tensorboard"):
        self.subdir = subdir

    def start(self, context: LogContext) -> None:
        super().start(context)
        require("tensorboard", "the tensorboard logger")
        from torch.utils.tensorboard import SummaryWriter

        purge = None if context.resumed_step is None else context.resumed_step + 1
        self.writer = SummaryWriter(log_dir=str(context.run_dir / self.subdir), purge_step=purge)
        if not context.resumed_step:  # a new run (or a resume before its first checkpoint)
            self.writer.add_text("config", "```yaml\n" + _yaml(context.config) + "```", 0)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, step: int, record: Mapping[str, Any]) -> None:
        for key, value in epoch_scalars(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, step: int, summary: Mapping[str, Any], checkpoint: Path | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        test = {f"test/{k}": float(v) for k, v in (summary.get("test") or {}).items() if _number(v)}
        for key, value in test.items():
            self.writer.add_scalar(key, value, step)
        # the resolved config as hyper-parameters, against the test metrics, in this run's own folder
        for event in hparams(flat_params(self.context.config), test):
            self.writer.file_writer.add_summary(event)
        self.writer.flush()

    def close(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()


def _yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


#: In a run folder: the MLflow run this run logs into (``--resume`` continues it).
MLFLOW_FILE = "mlflow.json"


@LOGGERS.register("mlflow", paper="https://mlflow.org/docs/latest/ml/tracking/")
class MLflowLogger(RunLogger):
    """An MLflow run per fusionzoo run: params, metrics by step, artifacts; resumable."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, log_checkpoint: bool = True):
        self.tracking_uri, self.experiment, self.log_checkpoint = tracking_uri, experiment, log_checkpoint
        self.pending: list[tuple[int, dict[str, float]]] = []

    def start(self, context: LogContext) -> None:
        super().start(context)
        require("mlflow", "the mlflow logger")
        from mlflow.tracking import MlflowClient

        uri, artifacts = self._store()
        self.client = MlflowClient(tracking_uri=uri)
        saved = context.run_dir / MLFLOW_FILE
        known = json.loads(saved.read_text()) if saved.is_file() and context.resumed_step is not None else None
        if known is not None and known.get("tracking_uri") == uri:
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "epoch/epoch")
            self.logged_epochs = max((int(m.value) for m in history), default=0)
            return
        experiment_id = self._experiment(self.experiment or context.experiment, artifacts)
        run = self.client.create_run(experiment_id, run_name=context.run_name, tags={**context.tags, "fusionzoo.run_dir": str(context.run_dir)})
        self.run_id, self.logged_epochs = run.info.run_id, 0
        params = flat_params(context.config)
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        write_json_atomic(saved, {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id})

    def _store(self) -> tuple[str, str | None]:
        """The tracking URI, and the artifact root when it is the default local store."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri, None
        root = (Path.cwd() / "mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=f"{artifacts}/{name}" if artifacts else None)
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        self.pending.append((step, {f"step/{k}": v for k, v in values.items()}))

    def log_epoch(self, step: int, record: Mapping[str, Any]) -> None:
        pending, self.pending = self.pending, []
        if record["epoch"] <= self.logged_epochs:  # logged before the interruption this run resumes
            return
        self._send([*pending, (step, epoch_scalars(record))])
        self.logged_epochs = record["epoch"]

    def _send(self, entries: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in entries for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, step: int, summary: Mapping[str, Any], checkpoint: Path | None) -> None:
        self._send([(step, {f"test/{k}": float(v) for k, v in (summary.get("test") or {}).items() if _number(v)})])
        run_dir = self.context.run_dir
        for name in ("metrics.json", "config.yaml", "curves.png"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        if self.log_checkpoint and checkpoint is not None and checkpoint.is_dir():
            self.client.log_artifacts(self.run_id, str(checkpoint), "checkpoint")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        if getattr(self, "run_id", None) is not None and not getattr(self, "finished", False):
            self.client.set_terminated(self.run_id, "KILLED")  # an interrupted run: --resume continues it


class RunLoggers:
    """The run's loggers as one: each call goes to every logger still on; a logger that raises is
    warned about once, by name, and turned off."""

    def __init__(self, loggers: Mapping[str, RunLogger]):
        self.loggers = dict(loggers)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _call(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as e:  # a tracking tool never stops training
                del self.loggers[name]
                warnings.warn(f"train.loggers: {name} failed in {method} ({type(e).__name__}: {e}); it is off for the rest of this run "
                              "(log.jsonl keeps every number)", stacklevel=3)
                if method != "close":
                    try:
                        logger.close()
                    except Exception:
                        pass

    def start(self, context: LogContext) -> None:
        self._call("start", context)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        self._call("log_step", step, values)

    def log_epoch(self, step: int, record: Mapping[str, Any]) -> None:
        self._call("log_epoch", step, record)

    def finish(self, step: int, summary: Mapping[str, Any], checkpoint: Path | None) -> None:
        self._call("finish", step, summary, checkpoint)

    def close(self) -> None:
        self._call("close")


def logger_sections(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """``train.loggers`` entries (a name or ``{name, options...}``) as mappings."""
    return [{"name": e} if isinstance(e, str) else dict(e) for e in entries]


def build_loggers(entries: Sequence[Any], context: LogContext) -> RunLoggers:
    """Build and start the loggers of ``train.loggers``; the config was checked when it was loaded."""
    loggers = RunLoggers({s["name"]: LOGGERS.create(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in logger_sections(entries)})
    if loggers:
        loggers.start(context)
    return loggers


def log_identity(default_experiment: str, run_dir: Path, given: Mapping[str, Any] | None = None) -> tuple[str, str, dict[str, str]]:
    """``(experiment, run name, tags)``: as ``train(log_as=...)`` gives them, else from the
    environment ``compare`` sets for its cells, else the config's name and the run folder's."""
    given = dict(given or {})
    tags = given.get("tags")
    if tags is None:
        tags = json.loads(os.environ.get(TAGS_ENV) or "{}")
    experiment = given.get("experiment") or os.environ.get(EXPERIMENT_ENV) or default_experiment
    name = given.get("run") or os.environ.get(RUN_NAME_ENV) or Path(run_dir).name
    return experiment, name, {str(k): str(v) for k, v in tags.items()}
