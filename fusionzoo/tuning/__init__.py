"""Hyper-parameter search with Optuna: ``fusionzoo tune CONFIG`` over the config's ``tune.space``
(:mod:`fusionzoo.tuning.space`), a study whose trials are run folders (:mod:`fusionzoo.tuning.study`)
and its report (:mod:`fusionzoo.tuning.report`). Optuna is the ``fusionzoo[tune]`` extra."""

from fusionzoo.tuning.space import SearchSpace

__all__ = ["SearchSpace", "tune"]


def __getattr__(name: str):
    if name == "tune":  # the study imports the training loop, which imports the config (and this package)
        from fusionzoo.tuning.study import tune

        return tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
