"""``fusionzoo tune``: an Optuna study over a config's ``tune.space``, each trial a run folder.

The objective is the selection metric (``train.select_metric``, the task's default otherwise) on
the validation split at the trial's selected epoch; test is never read by a trial. TPE samples
(seeded per trial from the config's seed and the trial's number, so a study is reproducible and
workers sharing it never draw the same values), a median or Hyperband pruner stops a trial whose
per-epoch validation metric falls behind, reported after each epoch's checkpoint.

Storage: ``OUT/study.db`` (SQLite) unless ``--storage URL`` names a database; processes started
with the same storage and ``--study`` share one study and its budget of ``--trials``: a trial's
number fixes its place, and one drawn after the budget is spent is dropped (never trained). A trial
interrupted (Ctrl-C) or killed (its heartbeat stops) is retried with the same values, resuming its
run folder from its last checkpoint; a trial that fails is recorded with its error and the study
goes on. When no trial is left running, the best trial's selected checkpoint is evaluated on test,
once, and the report is written: ``best_config.yaml`` (a config ``fusionzoo train`` takes),
``trials.md`` / ``trials.csv``, ``tune.json``, ``history.png``, ``intermediate.png`` and
``importance.png`` (Optuna's plots; PED-ANOVA importances).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fusionzoo.config import ExperimentConfig, build_dataset, load_config
from fusionzoo.errors import ConfigError
from fusionzoo.extras import require
from fusionzoo.atomic import write_json_atomic, write_text_atomic
from fusionzoo.launch import Launcher, run_logged
from fusionzoo.training.engine import train
from fusionzoo.training.runfolder import claim_output
from fusionzoo.training.selection import Selection
from fusionzoo.training.tasks import get_task
from fusionzoo.tuning.report import write_report
from fusionzoo.tuning.space import SearchSpace
from fusionzoo.tuning.trials import STATES, frozen, original_number, study_trials

__all__ = ["tune", "trial_seeded_tpe", "HEARTBEAT_ENV"]

#: Seconds between a running trial's heartbeats; a trial silent for 3 of them was killed and is retried.
HEARTBEAT = 10
HEARTBEAT_ENV = "FUSIONZOO_TUNE_HEARTBEAT"  # the tests' shorter heartbeat
REPORT_FILES = ("study.db", "trials", "workers", "tune_config.yaml", "best_config.yaml", "trials.md", "trials.csv", "tune.json", "history.png", "intermediate.png", "importance.png")


def tune(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    out: str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | None = None,
    launcher: Launcher | None = None,
    report: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or join, or resume) the study of a config's ``tune:`` section; returns what
    ``tune.json`` holds. ``trials``, ``pruner``: the section's unless given; ``timeout``: seconds
    after which this process starts no new trial. ``launcher``: its ``jobs`` workers run the trials
    (local processes, Ray tasks or Slurm jobs, each a ``fusionzoo tune`` on the same storage) and
    this process then reports; without one, this process runs them. ``report=False``: a worker's
    part only, the trials."""
    optuna = require("optuna", "fusionzoo tune")
    cfg = load_config(config, overrides)
    section = cfg.require("tune", "for fusionzoo tune: a search space, tune: {space: {train.lr: {log_uniform: [1.0e-4, 1.0e-2]}}}")
    space = SearchSpace.from_section(section["space"], cfg.origin)
    base = _base_config(cfg)
    _check_space(base, space)
    budget = trials if trials is not None else section.get("trials", 20)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--trials: an int >= 1, got {budget!r}")
    out = Path(out) if out is not None else Path("runs") / f"tune_{cfg.name}"
    claim_output(out, REPORT_FILES, "fusionzoo tune", known=(out / "tune.json").is_file() or (out / "study.db").is_file())
    selection = Selection.for_metric(_metric(base))
    name = study_name or cfg.name
    prune_after = section.get("prune_after", max(2, base.train.epochs // 3))
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = _open_study(optuna, url, name, selection, budget, base, space, pruner or section.get("pruner", "median"), prune_after)
    if not (out / "tune.json").is_file():  # marks the folder as a study's (compare leaves its trials out)
        write_json_atomic(out / "tune.json", {"study": name, "finished": False})
    say(f"study {name!r}: {budget} trials of {', '.join(p.key for p in space.parameters)}; objective: val {selection.metric} ({selection.mode}) -> {out}")
    objective = _Objective(base, space, out, selection, budget, name)
    if launcher is not None:
        worker = [str(config) if not isinstance(config, (Mapping, ExperimentConfig)) else _config_file(cfg, out), list(overrides),
                  budget, timeout, url, name, pruner]
        _launch_workers(launcher, worker, out, say)
    _work(optuna, study, objective, budget, timeout, say)  # (after launched workers: what they left, a stale trial)
    return write_report(study, base, space, out, selection, budget, objective, say) if report else {}


def _config_file(cfg: ExperimentConfig, out: Path) -> str:
    """A config given as data, written for the workers to read."""
    path = out / "tune_config.yaml"
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return str(path)


def _launch_workers(launcher: Launcher, worker: list, out: Path, say: Callable[[str], None]) -> None:
    """``launcher.jobs`` workers on the study, each its own ``fusionzoo tune`` process."""
    items = [(k, *worker, launcher.cpus_per_task, str(out), os.getcwd()) for k in range(launcher.jobs)]

    def lost(item: tuple, error: BaseException) -> dict[str, Any]:
        return {"worker": item[0], "exit": None, "last": launcher.failure(error)}

    say(f"{launcher.jobs} workers on {launcher.name}")
    for _, result in launcher.map(tune_worker, items, lost):
        if result["exit"] != 0:
            say(f"worker {result['worker']} failed: {result['last']}")


def tune_worker(k: int, config: str, overrides: list, trials: int, timeout: float | None, storage: str, study: str, pruner: str | None,
                threads: int, out: str, cwd: str) -> dict[str, Any]:
    """Worker ``k`` of a launched study (in a local thread, a Ray task or a Slurm job): one
    ``fusionzoo tune --no-report`` process with ``threads`` threads, logging to ``OUT/workers/``."""
    command = [sys.executable, "-m", "fusionzoo", "tune", config, "--out", out, "--trials", str(trials), "--storage", storage,
               "--study", study, "--no-report", *[a for o in overrides for a in ("--set", o)]]
    command += (["--timeout", str(timeout)] if timeout is not None else []) + (["--pruner", pruner] if pruner else [])
    code, last = run_logged(command, Path(cwd) / out / "workers" / f"worker-{k}.log", cwd, threads)
    return {"worker": k, "exit": code, "last": last}


def _heartbeat() -> int:
    return int(os.environ.get(HEARTBEAT_ENV, HEARTBEAT))


def _base_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a trial starts from: the ``tune:`` section dropped."""
    raw = cfg.to_dict()
    raw.pop("tune", None)
    base = load_config(raw)
    return ExperimentConfig(raw=base.raw, origin=cfg.origin, train=base.train)


def _check_space(base: ExperimentConfig, space: SearchSpace) -> None:
    """Every bound and choice applied alone makes a valid config (as ``--set`` would be checked)."""
    for key, override in space.corner_overrides():
        try:
            load_config(base, [override])
        except ConfigError as e:
            raise ConfigError(f"{base.origin}: tune.space.{key}: {override.partition('=')[2]} does not make a valid config: {e}") from None


def _metric(base: ExperimentConfig) -> str:
    """The selection metric: ``train.select_metric``, else the task's default (read from the data)."""
    if base.train.select_metric:
        return base.train.select_metric
    if base.kind == "align":
        return "mean_R@1"
    return get_task(getattr(build_dataset(base, "train"), "task", "multiclass")).default_metric


def _fingerprint(base: ExperimentConfig, space: SearchSpace, metric: str) -> str:
    text = json.dumps({"config": base.to_dict(), "space": space.to_dict(), "metric": metric}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_study(optuna, url: str, name: str, selection: Selection, budget: int, base: ExperimentConfig, space: SearchSpace, pruner: str,
                prune_after: int):
    """Create or load the study; one made from another config, space or metric is refused."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    heartbeat = _heartbeat()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial, ours
    direction = "maximize" if selection.mode == "max" else "minimize"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since Optuna 2.8
        storage = _retrying(lambda: RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True),
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
        ))
        study = _retrying(lambda: optuna.create_study(
            storage=storage, study_name=name, direction=direction, load_if_exists=True,
            sampler=trial_seeded_tpe(base.seed, n_startup_trials=min(10, max(4, budget // 3))), pruner=_pruner(optuna, pruner, base, prune_after),
        ))
    fingerprint = _fingerprint(base, space, selection.metric)
    known = study.user_attrs.get("fusionzoo")
    if known is None:
        study.set_user_attr("fusionzoo", {"fingerprint": fingerprint, "metric": selection.metric, "space": space.to_dict()})
    elif known["fingerprint"] != fingerprint:
        raise ConfigError(
            f"study {name!r} in {url} was made from another config, space or metric: give another --study (or --out) for this one"
        )
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in {url} {study.direction.name.lower()}s; this config's val {selection.metric} wants {direction}")
    return study


def _retrying(make: Callable[[], Any], tries: int = 5) -> Any:
    """``make()``, again after a pause when the database refuses it: workers that start together
    race to create the same tables and study, and all but one lose the race once."""
    from sqlalchemy.exc import SQLAlchemyError

    for i in range(tries):
        try:
            return make()
        except SQLAlchemyError:
            if i == tries - 1:
                raise
            time.sleep(0.5 * (i + 1))


def _pruner(optuna, name: str, base: ExperimentConfig, prune_after: int):
    """``median``: once 3 trials have finished, a trial below their median at the same epoch is
    stopped, from epoch ``prune_after`` on; ``hyperband``: successive halving brackets from
    ``prune_after`` epochs to ``train.epochs``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=prune_after)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(prune_after, base.train.epochs), max_resource=base.train.epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: one of median, hyperband, none, got {name!r}")


def trial_seeded_tpe(seed: int, **options: Any):
    """Optuna's TPE sampler, seeded per trial with ``seed + trial number``: a study replays the
    same draws, and two workers (whose trials have distinct numbers) never draw the same random
    start. Every call goes to the TPE sampler of the trial at hand."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self._current: tuple[int, Any] | None = None

        def _for(self, trial):
            if self._current is None or self._current[0] != trial.number:
                self._current = (trial.number, optuna.samplers.TPESampler(seed=seed + trial.number, **options))
            return self._current[1]

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededTPE()


def _budget_left(study, budget: int) -> bool:
    return len(study_trials(study)) < budget


class _Objective:
    """One trial: draw the values, train the run folder ``trials/trial-NNNN`` (resumed when it is a
    retry), report each epoch's validation value to the pruner, return the selected epoch's."""

    def __init__(self, base: ExperimentConfig, space: SearchSpace, out: Path, selection: Selection, budget: int, study_name: str):
        self.base, self.space, self.out, self.selection, self.budget, self.study_name = base, space, out, selection, budget, study_name

    def run_dir(self, trial) -> Path:
        """``trials/trial-NNNN`` of a recorded trial (a retry's is its original's)."""
        return self.out / "trials" / f"trial-{original_number(trial):04d}"

    def __call__(self, trial) -> float:
        import optuna

        study = trial.study
        earlier = [t for t in study_trials(study) if t.number < trial.number]
        if len(earlier) >= self.budget:  # another worker drew the last trial of the budget first
            trial.set_user_attr("over_budget", True)
            study.stop()
            raise optuna.TrialPruned("the budget was spent by another worker")
        overrides = self.space.overrides(self.space.suggest(trial))
        trial.set_user_attr("overrides", overrides)
        record = frozen(trial)
        run_dir, number = self.run_dir(record), original_number(record)

        def report(record: dict[str, Any]) -> None:
            trial.report(self.selection.value(record), record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        log_as = {"experiment": self.study_name, "run": run_dir.name, "tags": {"study": self.study_name, "trial": number}}
        try:
            summary = train(self.base, run_dir=run_dir, resume=True, overrides=overrides, log=False,
                            on_epoch=report, test=False, log_as=log_as)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            _retry_later(study, trial)  # Ctrl-C: the next start resumes it
            raise
        except Exception as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:500])
            raise
        trial.set_user_attr("epochs_run", summary["epochs_run"])
        return float(summary["val"][self.selection.metric])


def _retry_later(study, trial) -> None:
    """An interrupted trial: queue a retry with the same values (it resumes the run folder)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental since Optuna 2.8
        retry = RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)
    retry(study, frozen(trial))


def _work(optuna, study, objective: _Objective, budget: int, timeout: float | None, say: Callable[[str], None]) -> None:
    """Run trials until the budget is spent (or ``timeout``), then wait for the trials other
    workers still run, retrying any whose worker died."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def after(study, trial) -> None:
        if trial.user_attrs.get("over_budget"):
            return
        value = "" if trial.value is None else f"  val {objective.selection.metric} {trial.value:.4f}"
        why = f"  ({trial.user_attrs['reason']})" if "reason" in trial.user_attrs else ""
        pruned = f" after epoch {max(trial.intermediate_values)}" if trial.state.name == "PRUNED" and trial.intermediate_values else ""
        say(f"trial {original_number(trial)}: {STATES.get(trial.state.name, trial.state.name.lower())}{pruned}{value}{why}  [{objective.space.describe(trial.params)}]")
        if not _budget_left(study, budget):
            study.stop()

    heartbeat = _heartbeat()
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        waiting = any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False))
        if _budget_left(study, budget) or waiting:
            study.optimize(objective, timeout=left, catch=(Exception,), callbacks=[after], gc_after_trial=True)
            continue  # the budget spent, the time up, or a retry queued meanwhile: the checks above say which
        if not any(t.state.name == "RUNNING" for t in study_trials(study)):
            return
        time.sleep(heartbeat)  # another worker's trial: wait for it, or for its heartbeat to go stale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
