"""Modality Shapley values: what each modality contributes to one prediction, exactly.

Legend: ``b`` batch, ``m`` modalities, ``p`` presence patterns (subsets), ``c`` classes.

The players are the model's modalities; the value of a subset ``S`` for a sample is the model's
output with only ``S`` present, through the missing-modality contract (the other modalities are
*absent*, not zero-filled: every fusion block gives the same result whatever a missing slot holds).
The encoders run once per batch; the fusion block and head run once per subset (``2^m`` patterns,
cheap next to the encoders). A modality a sample lacks in the data contributes nothing to it.

* Exact Shapley values ``phi_i = sum_{S not containing i} |S|! (m-|S|-1)! / m! (v(S+i) - v(S))``;
  per sample they sum to ``v(all) - v(none)`` (efficiency, tested).
* The pairwise Shapley interaction index (Grabisch 1997)
  ``I_ij = sum_{S without i, j} |S|! (m-|S|-2)! / (m-1)! (v(S+ij) - v(S+i) - v(S+j) + v(S))``:
  positive for synergy (the pair is worth more together), negative for redundancy.
* Above ``exact_up_to`` modalities, the permutation estimate (Castro et al. 2009): the mean marginal
  contribution over random orders, with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pattern_outputs", "exact_shapley", "interaction_index", "permutation_shapley", "select_value", "output_value", "VALUES"]

#: What a value can be, per task: a class's or label's logit, probability or log-probability, or a
#: regression target's prediction.
VALUES = {"multiclass": ("logit", "prob", "log_prob"), "multilabel": ("logit", "prob", "log_prob"), "regression": ("output",)}


Encoded = tuple[dict[str, Tensor], dict[str, Tensor]]


@torch.no_grad()
def pattern_outputs(model: torch.nn.Module, batch: dict, patterns: Sequence[int] | None = None, encoded: Encoded | None = None) -> Tensor:
    """The model's logits ``[p, b, c]`` with only the modalities of each pattern present (bit ``k`` of a
    pattern is ``model.modalities[k]``; default every pattern ``0 .. 2^m - 1``). ``encoded`` is
    ``model.encode(batch)`` when the caller has it already (the encoders then do not run again)."""
    modalities = model.modalities
    patterns = range(1 << len(modalities)) if patterns is None else patterns
    features, present = model.encode(batch) if encoded is None else encoded
    n = batch["label"].shape[0]
    full = {m: present[m] if m in present else _ones(features[m], n) for m in features}
    outs = []
    for p in patterns:
        masks = {m: mask & bool(p >> modalities.index(m) & 1) for m, mask in full.items()}
        outs.append(model.head(model.fuse(features, masks)).float())
    return torch.stack(outs)


def _ones(x: Tensor, n: int) -> Tensor:
    return torch.ones(x.shape[:2] if x.dim() == 3 else (n,), dtype=torch.bool, device=x.device)


def select_value(logits: Tensor, classes: Tensor, value: str = "logit") -> Tensor:
    """``[p, b]``: the ``value`` (logit, probability or log-probability) of each sample's class in ``classes [b]``."""
    if value not in VALUES["multiclass"]:
        raise ValueError(f"explain: value must be one of {VALUES['multiclass']}, got {value!r}")
    scores = logits if value == "logit" else logits.softmax(-1) if value == "prob" else logits.log_softmax(-1)
    return scores.gather(-1, classes.view(1, -1, 1).expand(scores.shape[0], -1, 1)).squeeze(-1)


def output_value(logits: Tensor, value: str = "logit") -> Tensor:
    """``[p, b, k]``: every output's ``value``: a multi-label head's logit, probability (sigmoid) or
    log-probability, or (``output``) a regression head's prediction."""
    allowed = VALUES["multilabel"] + VALUES["regression"]
    if value not in allowed:
        raise ValueError(f"explain: value must be one of {', '.join(allowed)}, got {value!r}")
    return logits.sigmoid() if value == "prob" else F.logsigmoid(logits) if value == "log_prob" else logits


def exact_shapley(v: Tensor) -> Tensor:
    """``[b, ..., m]`` Shapley values from the values ``v [2^m, b, ...]`` of every pattern."""
    p, m = v.shape[0], int(math.log2(v.shape[0]))
    if 1 << m != p:
        raise ValueError(f"explain: {p} values is not 2^m")
    shape, v = v.shape[1:], v.reshape(p, -1).double()
    out = torch.zeros(v.shape[1], m, dtype=torch.float64, device=v.device)
    for i in range(m):
        for s in range(p):
            if s >> i & 1:
                continue
            size = bin(s).count("1")
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            out[:, i] += weight * (v[s | 1 << i] - v[s])
    return out.view(*shape, m)


def interaction_index(v: Tensor) -> Tensor:
    """``[b, ..., m, m]`` pairwise Shapley interaction indices from ``v [2^m, b, ...]`` (zero diagonal)."""
    p, m = v.shape[0], int(math.log2(v.shape[0]))
    shape, v = v.shape[1:], v.reshape(p, -1).double()
    out = torch.zeros(v.shape[1], m, m, dtype=torch.float64, device=v.device)
    for i in range(m):
        for j in range(i + 1, m):
            pair = 1 << i | 1 << j
            for s in range(p):
                if s & pair:
                    continue
                size = bin(s).count("1")
                weight = math.factorial(size) * math.factorial(m - size - 2) / math.factorial(m - 1)
                term = weight * (v[s | pair] - v[s | 1 << i] - v[s | 1 << j] + v[s])
                out[:, i, j] += term
                out[:, j, i] += term
    return out.view(*shape, m, m)


@torch.no_grad()
def permutation_shapley(
    model: torch.nn.Module, batch: dict, value_of: Callable[[Tensor], Tensor], permutations: int = 64,
    generator: torch.Generator | None = None, encoded: Encoded | None = None,
) -> tuple[Tensor, Tensor]:
    """``(estimate [b, ..., m], standard error [b, ..., m])`` of the Shapley values of ``value_of``
    (logits ``[p, b, c]`` -> values ``[p, b, ...]``) from ``permutations`` random orders of the
    modalities (the same orders for the whole batch): ``m + 1`` subsets each, the encoders run once."""
    m = len(model.modalities)
    generator = generator or torch.Generator().manual_seed(0)
    encoded = model.encode(batch) if encoded is None else encoded
    marginals = None
    for k in range(permutations):
        order = torch.randperm(m, generator=generator).tolist()
        prefixes = [sum(1 << i for i in order[:j]) for j in range(m + 1)]
        v = value_of(pattern_outputs(model, batch, prefixes, encoded)).double().cpu()  # [m + 1, b, ...]
        if marginals is None:
            marginals = torch.zeros(permutations, *v.shape[1:], m, dtype=torch.float64)
        for j, i in enumerate(order):
            marginals[k, ..., i] = v[j + 1] - v[j]
    se = marginals.std(dim=0, unbiased=True) / math.sqrt(permutations) if permutations > 1 else torch.full_like(marginals[0], float("nan"))
    return marginals.mean(dim=0), se
