"""Statistics for comparing methods run on the same seeds (and folds): ``scipy.stats`` throughout.

* :func:`mean_ci`: mean, sample standard deviation and the two-sided t interval of one method.
* :func:`paired_comparison`: one method against another over the (fold, seed) pairs both ran: the
  mean paired difference with its t interval, the paired t-test (with the Nadeau-Bengio correction
  of its variance when the pairs are resampled train/test splits, ``test_train_ratio > 0``) and the
  Wilcoxon signed-rank test (exact for small ``n``).
* :func:`holm`: Holm's step-down adjustment of p-values for comparing several methods to the best.
* :func:`friedman`: the Friedman test over all methods with their average ranks (1 = best) and the
  Nemenyi critical difference (Demšar 2006): two methods whose average ranks differ by less are
  not distinguishable at ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["t_quantile", "mean_ci", "paired_comparison", "holm", "friedman"]


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``0.5 <= p < 1``) of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    return float(stats.t.ppf(p, df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float | int | None]:
    """``{mean, std, n, ci_low, ci_high, half_width}`` of ``values``: the sample standard deviation
    (``n - 1``) and the two-sided ``level`` interval ``mean +- t * std / sqrt(n)``. With one value the
    spread and interval are ``None``: one seed says nothing about another."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci: no values")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "n": 1, "ci_low": None, "ci_high": None, "half_width": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}


def paired_comparison(a: Mapping[Any, float], b: Mapping[Any, float], level: float = 0.95, test_train_ratio: float = 0.0) -> dict[str, Any]:
    """``a - b`` over the pairs (keys) both have: ``{n, mean, ci_low, ci_high, p_t, p_wilcoxon}``.

    ``p_t`` is the two-sided paired t-test; with ``test_train_ratio`` (``n_test / n_train`` of each
    resampled split) its variance is multiplied by ``1 + n * ratio`` (Nadeau & Bengio 2003, as
    Bouckaert & Frank 2004 use it), since resampled training sets overlap. ``p_wilcoxon`` is the
    two-sided signed-rank test (``None`` when every difference is 0). With fewer than 2 pairs the
    interval and p-values are ``None``."""
    from scipy import stats

    keys = sorted(set(a) & set(b), key=str)
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "mean": sum(diffs) / n if n else None, "ci_low": None, "ci_high": None, "p_t": None, "p_wilcoxon": None}
    if n < 2:
        return out
    mean = out["mean"]
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) * (1 / n + test_train_ratio)
    if var == 0:
        out.update(ci_low=mean, ci_high=mean, p_t=1.0 if mean == 0 else 0.0)
    else:
        se = math.sqrt(var)
        half = t_quantile(0.5 + level / 2, n - 1) * se
        out.update(ci_low=mean - half, ci_high=mean + half, p_t=float(2 * stats.t.sf(abs(mean) / se, n - 1)))
    if any(diffs):
        out["p_wilcoxon"] = float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    return out


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values (family-wise error), ``None`` kept as ``None``."""
    given = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda x: x[0])
    m, running, out = len(given), 0.0, {k: None for k in pvalues}
    for i, (p, k) in enumerate(given):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def friedman(scores: Mapping[str, Mapping[Any, float]], lower_is_better: bool = False, alpha: float = 0.05) -> dict[str, Any] | None:
    """Over the pairs every method ran: ``{n, p, ranks: {method: average rank}, cd}`` (rank 1 = best,
    ties share their mean rank; ``cd`` is the Nemenyi critical difference at ``alpha``). None with
    fewer than 3 methods or 2 pairs."""
    from scipy import stats

    methods = sorted(scores)
    keys = sorted(set.intersection(*(set(scores[m]) for m in methods)), key=str) if methods else []
    if len(methods) < 3 or len(keys) < 2:
        return None
    table = [[(1 if lower_is_better else -1) * float(scores[m][k]) for m in methods] for k in keys]
    ranks = [stats.rankdata(row) for row in table]
    average = {m: float(sum(r[i] for r in ranks) / len(keys)) for i, m in enumerate(methods)}
    columns = list(zip(*table))
    constant = all(len(set(row)) == 1 for row in table)
    p = 1.0 if constant else float(stats.friedmanchisquare(*columns).pvalue)
    k, n = len(methods), len(keys)
    q = float(stats.studentized_range.ppf(1 - alpha, k, math.inf)) / math.sqrt(2)
    return {"n": n, "p": p, "ranks": average, "cd": q * math.sqrt(k * (k + 1) / (6 * n)), "alpha": alpha}
