"""What a study leaves in its folder: the trials table, the best config, Optuna's plots, the test
evaluation of the best trial (once, when no trial is left running), ``tune.json``."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from fusionzoo.atomic import pyplot, save_figure_atomic, write_json_atomic, write_text_atomic
from fusionzoo.config import ExperimentConfig, apply_overrides
from fusionzoo.errors import RunFolderError
from fusionzoo.training.engine import train
from fusionzoo.training.selection import Selection
from fusionzoo.tuning.space import SearchSpace, as_yaml
from fusionzoo.tuning.trials import STATES, original_number, study_trials

__all__ = ["write_report", "trial_rows"]


def trial_rows(study, space: SearchSpace, selection: Selection) -> list[dict[str, Any]]:
    """One row per trial within the budget, by number: its state, value, epochs, values, time."""
    rows = []
    for t in sorted(study_trials(study), key=original_number):
        values = {p.key: p.value(t.params[p.key]) for p in space.parameters if p.key in t.params}
        epochs = t.user_attrs.get("epochs_run", max(t.intermediate_values, default=0))
        seconds = t.duration.total_seconds() if t.duration is not None else None
        note = t.user_attrs.get("reason", "")
        if t.number != original_number(t):
            note = (note + "; " if note else "") + "resumed after an interruption"
        rows.append({"trial": original_number(t), "state": STATES.get(t.state.name, t.state.name.lower()),
                     f"val {selection.metric}": t.value, "epochs": epochs, **values, "seconds": seconds, "note": note})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if not math.isnan(value) else "nan"
    return as_yaml(value) if isinstance(value, (list, dict)) else str(value)


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no trial yet)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k)).replace("|", "\\|") for k in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    return buffer.getvalue()


def _best(trials: Sequence[Any], selection: Selection):
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and not math.isnan(t.value)]
    if not done:
        return None
    sign = 1 if selection.mode == "max" else -1
    return max(done, key=lambda t: (sign * t.value, -original_number(t)))  # the earliest on a tie


def _test_once(base: ExperimentConfig, run_dir: Path, overrides: Sequence[str]) -> dict[str, Any] | None:
    """The best trial's test metrics: evaluated on its selected checkpoint the first time, read
    from its ``metrics.json`` after that."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        if saved.get("test") is not None:
            return saved["test"]
    try:
        return train(base, run_dir=run_dir, resume=True, overrides=overrides, log=False, test=True)["test"]
    except RunFolderError:  # another worker of the study is evaluating it now: read its result
        for _ in range(120):
            time.sleep(1)
            if metrics.is_file() and json.loads(metrics.read_text()).get("test") is not None:
                return json.loads(metrics.read_text())["test"]
        raise


def _plots(study, out: Path) -> list[str]:
    """Optuna's optimisation history, intermediate values (the pruned trials' curves) and parameter
    importances (PED-ANOVA, no scikit-learn needed); a plot the trials cannot make yet is left out."""
    if pyplot() is None:
        return []
    import optuna
    from optuna.visualization import matplotlib as plots

    made = []
    makers = {
        "history.png": lambda: plots.plot_optimization_history(study),
        "intermediate.png": lambda: plots.plot_intermediate_values(study),
        "importance.png": lambda: plots.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()),
    }
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = make()
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        save_figure_atomic(fig, out / name)
        made.append(name)
    return made


def write_report(study, base: ExperimentConfig, space: SearchSpace, out: Path, selection: Selection, budget: int, objective,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the report of the study as it stands; returns ``tune.json``'s content."""
    trials = study_trials(study)
    rows = trial_rows(study, space, selection)
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "failed", "running", "waiting")}
    finished = counts["running"] == counts["waiting"] == 0 and len(rows) >= budget
    best = _best(trials, selection)
    result: dict[str, Any] = {
        "study": study.study_name, "metric": selection.metric, "direction": selection.mode, "budget": budget, "trials": counts,
        "finished": finished, "space": space.to_dict(), "pruner": type(study.pruner).__name__, "sampler": "TPE, seeded per trial",
        "best": None,
    }
    if best is not None:
        overrides = best.user_attrs["overrides"]
        run_dir = objective.run_dir(best)
        result["best"] = {"trial": original_number(best), "val": best.value, "overrides": overrides, "run_dir": str(run_dir), "test": None}
        config = apply_overrides(copy.deepcopy(base.to_dict()), overrides, origin=base.origin)
        header = (f"# The best of {len(rows)} trials of `fusionzoo tune` (study {study.study_name!r}): trial {original_number(best)}, "
                  f"val {selection.metric} {best.value:.4f}.\n# Train it with: fusionzoo train best_config.yaml\n")
        write_text_atomic(out / "best_config.yaml", header + yaml.safe_dump(config, sort_keys=False))
        if finished:  # every trial is in: the only test evaluation of the study
            result["best"]["test"] = _test_once(base, run_dir, overrides)
    write_text_atomic(out / "trials.md", f"# Trials of study {study.study_name!r}\n\n{_markdown(rows)}")
    write_text_atomic(out / "trials.csv", _csv(rows))
    result["plots"] = _plots(study, out)
    write_json_atomic(out / "tune.json", result)
    _say_result(result, out, say)
    return result


def _say_result(result: dict[str, Any], out: Path, say: Callable[[str], None]) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in result["trials"].items() if n)
    say(f"{result['study']}: {counts or 'no trial'} of {result['budget']}")
    best = result["best"]
    if best is None:
        say("no trial has completed")
    else:
        test = best["test"]
        shown = f"  test {result['metric']} {test[result['metric']]:.4f}" if test and result["metric"] in test else ""
        say(f"best: trial {best['trial']}  val {result['metric']} {best['val']:.4f}{shown}  [{', '.join(best['overrides'])}]")
        say(f"best config: {out / 'best_config.yaml'}")
    if not result["finished"]:
        say("the study is not finished (trials still running elsewhere, or --timeout): run the same command again to go on")
    say(f"trials: {out / 'trials.md'}")
