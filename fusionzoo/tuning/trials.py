"""The trials of a study as fusionzoo counts them: a retry stands for the trial it repeats (and
uses its run folder), a trial drawn after the budget was spent is not one."""

from __future__ import annotations

__all__ = ["STATES", "frozen", "original_number", "study_trials"]

#: Optuna's trial states as the trials table writes them.
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def frozen(trial):
    """A running trial's record in the storage (its system attributes: what it retries)."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def original_number(trial) -> int:
    """The number of the trial a retry repeats (its run folder's), or the trial's own (of a
    recorded trial: a ``FrozenTrial``)."""
    history = trial.system_attrs.get("retry_history") or []
    return history[0] if history else trial.number


def study_trials(study) -> list:
    """The study's trials within its budget: without the ones retried (their retry stands for
    them) and without those drawn after the budget was spent."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    return [t for t in trials if t.number not in retried and not t.user_attrs.get("over_budget")]
