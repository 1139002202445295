"""``fusionzoo explain``: each modality's Shapley value for every prediction of a split, and a summary.

For each sample, the value of a subset of modalities is the model's output (by default the logit of
the class in question) with only that subset present (:mod:`fusionzoo.training.shapley`). The values
are computed for the predicted class and for the true class; with them the pairwise interaction
index (synergy > 0, redundancy < 0) of every pair of modalities, for the predicted class.

``explain_run`` writes into ``<run>/explain/<split>/`` (or ``out``):

* ``shapley.csv``: one row per sample: its index in the split, its row in the data file where the
  dataset knows it (the manifest's line), label, prediction, ``v(all)`` and ``v(none)``, one column
  per modality (``phi:<m>``, predicted class), one per modality for the true class
  (``phi_true:<m>``) and one per pair (``interaction:<a>+<b>``); for the ``attention`` and
  ``transformer`` blocks also their attention per modality (``attention:<m>``: weights the block
  computed, not attributions);
* ``summary.md`` / ``summary.json``: per true class, the mean |value| of each modality and its share
  of the total, and the mean interaction of each pair;
* ``shapley_classes.png`` (mean contribution per class), ``shapley_samples.png`` (every sample's
  values, a strip per modality), ``interaction.png`` (the mean interaction matrix).

Multi-class runs only. Values are exact up to ``exact_up_to`` modalities (``2^m`` fusion passes per
batch, the encoders once); above it, the permutation estimate with its standard error.
"""

from __future__ import annotations

import csv
import io
import json
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fusionzoo.atomic import pyplot, save_figure_atomic, write_text_atomic
from fusionzoo.config import build_dataset
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.fusion.attention import AttentionFusion
from fusionzoo.fusion.transformer import TransformerFusion
from fusionzoo.training.checkpoint import load_data_state, load_run, resolve_checkpoint
from fusionzoo.training.evaluate import move_batch
from fusionzoo.training.shapley import exact_shapley, interaction_index, pattern_outputs, permutation_shapley, select_value
from fusionzoo.training.tasks import get_task

__all__ = ["explain", "explain_run", "summarize"]


@torch.no_grad()
def explain(model: torch.nn.Module, loader: Any, value: str = "logit", exact_up_to: int = 10, permutations: int = 64) -> dict[str, Tensor]:
    """Per-sample Shapley values of ``model``'s modalities over ``loader``: ``pred``, ``label``,
    ``phi`` (predicted class) and ``phi_true`` ``[n, m]``, ``interaction`` ``[n, m, m]`` (exact only),
    ``v_all`` and ``v_none`` ``[n]`` (predicted class), and ``se`` ``[n, m]`` (zero when exact)."""
    model.eval()
    device = next(model.parameters()).device
    exact = len(model.modalities) <= exact_up_to
    parts: dict[str, list[Tensor]] = {}
    generator = torch.Generator().manual_seed(0)
    for batch in loader:
        batch = move_batch(batch, device)
        label = batch["label"]
        encoded = model.encode(batch)  # the encoders once per batch; every subset reuses their output
        if exact:
            logits = pattern_outputs(model, batch, encoded=encoded)  # [2^m, b, c]
            pred = logits[-1].argmax(-1)
            v, v_true = select_value(logits, pred, value), select_value(logits, label.clamp(min=0), value)
            got = {"phi": exact_shapley(v), "phi_true": exact_shapley(v_true), "interaction": interaction_index(v),
                   "v_all": v[-1].double(), "v_none": v[0].double()}
            got["se"] = torch.zeros_like(got["phi"])
        else:
            ends = pattern_outputs(model, batch, [0, (1 << len(model.modalities)) - 1], encoded)
            pred = ends[-1].argmax(-1)
            v = select_value(ends, pred, value)
            phi, se = permutation_shapley(model, batch, pred, value, permutations, generator, encoded)
            phi_true, _ = permutation_shapley(model, batch, label.clamp(min=0), value, permutations, generator, encoded)
            got = {"phi": phi, "phi_true": phi_true, "se": se, "v_all": v[-1].double(), "v_none": v[0].double()}
        got |= {"pred": pred, "label": label}
        weights = _attention_weights(model, encoded)
        if weights is not None:
            got["attention"] = weights
        for k, t in got.items():
            parts.setdefault(k, []).append(t.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _attention_weights(model: torch.nn.Module, encoded: tuple[dict[str, Tensor], dict[str, Tensor]]) -> Tensor | None:
    """``[b, m]`` attention weights per modality, for the blocks that have a per-sample reading of
    them (weights the block computed, not attributions; 0 for a missing modality): the ``attention``
    block's softmax over the modalities; for ``transformer``, the attention its CLS token pays in
    the last layer (mean over heads) to each modality's tokens, the rest going to itself."""
    fusion = model.fusion
    if not isinstance(fusion, (AttentionFusion, TransformerFusion)):
        return None
    features, present = fusion.prepare(encoded[0], encoded[1] or None)
    if isinstance(fusion, AttentionFusion):
        return fusion.attention_weights(features, present).float()
    return cls_attention(fusion, features, present)


def cls_attention(fusion: torch.nn.Module, features: dict[str, Tensor], present: dict[str, Tensor] | None) -> Tensor:
    """``[b, m]``: the last layer's attention (mean over heads) from a ``transformer`` block's CLS
    token to each modality's tokens, as its SDPA computes it (``prepare``d inputs)."""
    x, mask = fusion.tokens(features, present)
    for block in fusion.blocks[:-1]:
        x = block(x, mask)
    last = fusion.blocks[-1]
    h, heads = last.norm1(x), last.attn.num_heads
    q = last.attn.to_q(h[:, :1]).unflatten(-1, (heads, -1)).transpose(1, 2)  # [b, k, 1, d]
    k = last.attn.to_kv(h).unflatten(-1, (2, heads, -1))[:, :, 0].transpose(1, 2)  # [b, k, s, d]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1).mean(1)[:, 0]  # [b, s]
    sizes = [features[m].shape[1] for m in fusion.modalities]
    return torch.stack([part.sum(-1) for part in probs[:, 1:].split(sizes, dim=1)], dim=1).float()


def summarize(result: dict[str, Tensor], modalities: tuple[str, ...], classes: list[str] | None = None) -> dict[str, Any]:
    """Per true class: the mean |phi| of each modality, its share of the sum, and the mean interaction of each pair."""
    rows = []
    labels = result["label"]
    for c in sorted(set(labels.tolist())):
        if c < 0:
            continue
        rows.append(_summary_row(result, labels == c, modalities, classes[c] if classes else str(c)))
    rows.append(_summary_row(result, labels >= 0, modalities, "all"))
    return {"modalities": list(modalities), "classes": rows}


def _summary_row(result: dict[str, Tensor], keep: Tensor, modalities: tuple[str, ...], name: str) -> dict[str, Any]:
    mean_abs = result["phi"][keep].abs().mean(0)
    total = float(mean_abs.sum()) or 1.0
    row: dict[str, Any] = {"class": name, "n": int(keep.sum())}
    row["mean_abs"] = {m: float(mean_abs[i]) for i, m in enumerate(modalities)}
    row["share"] = {m: float(mean_abs[i]) / total for i, m in enumerate(modalities)}
    row["mean"] = {m: float(result["phi"][keep][:, i].mean()) for i, m in enumerate(modalities)}
    if "interaction" in result:
        inter = result["interaction"][keep].mean(0)
        row["interaction"] = {f"{a}+{b}": float(inter[i, j]) for (i, a), (j, b) in combinations(enumerate(modalities), 2)}
    return row


def explain_run(
    run: str | Path, split: str = "test", out: str | Path | None = None, samples: int | None = None, value: str = "logit",
    batch_size: int = 256, exact_up_to: int = 10, permutations: int = 64,
) -> dict[str, Any]:
    """Explain a trained run's predictions on ``split`` and write the files of the module docstring; returns the summary."""
    run_dir, _ = resolve_checkpoint(run)
    model, cfg, _ = load_run(run)
    if cfg.kind != "model":
        raise ValueError(f"explain: {run_dir} is an alignment run; explain takes a classifier")
    dataset = build_dataset(cfg, split, load_data_state(run_dir))
    if get_task(dataset).name != "multiclass":
        raise ValueError(f"explain: multi-class runs only (this one is {get_task(dataset).name})")
    if samples is not None:
        if samples < 1:
            raise ValueError(f"explain: --samples must be >= 1, got {samples}")
        dataset = torch.utils.data.Subset(dataset, range(min(samples, len(dataset))))
    result = explain(model, make_loader(dataset, batch_size, preprocess=preprocessors(model.encoders)), value, exact_up_to, permutations)
    classes = getattr(getattr(dataset, "dataset", dataset), "classes", None)
    summary = summarize(result, model.modalities, classes) | {"run": str(run_dir), "split": split, "value": value,
                                                              "exact": "interaction" in result, "samples": int(result["label"].shape[0])}
    out = Path(out) if out is not None else run_dir / "explain" / split
    write_text_atomic(out / "shapley.csv", _csv(result, model.modalities, dataset))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "summary.md", render_summary(summary))
    _plots(result, summary, out)
    return summary


def _csv(result: dict[str, Tensor], modalities: tuple[str, ...], dataset: Any) -> str:
    base = getattr(dataset, "dataset", dataset)
    indices = list(getattr(dataset, "indices", range(len(result["label"]))))
    line_of = getattr(base, "line_of", None)
    pairs = list(combinations(range(len(modalities)), 2)) if "interaction" in result else []
    header = ["index", "row", "label", "prediction", "v_all", "v_none"] + [f"phi:{m}" for m in modalities]
    header += [f"phi_true:{m}" for m in modalities] + [f"interaction:{modalities[i]}+{modalities[j]}" for i, j in pairs]
    if "interaction" not in result:
        header += [f"se:{m}" for m in modalities]
    if "attention" in result:
        header += [f"attention:{m}" for m in modalities]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for k, idx in enumerate(indices):
        row = [idx, line_of(idx) if line_of else "", int(result["label"][k]), int(result["pred"][k]), f"{result['v_all'][k]:.6g}", f"{result['v_none'][k]:.6g}"]
        row += [f"{x:.6g}" for x in result["phi"][k].tolist()] + [f"{x:.6g}" for x in result["phi_true"][k].tolist()]
        row += [f"{result['interaction'][k, i, j]:.6g}" for i, j in pairs]
        if "interaction" not in result:
            row += [f"{x:.3g}" for x in result["se"][k].tolist()]
        if "attention" in result:
            row += [f"{x:.4g}" for x in result["attention"][k].tolist()]
        writer.writerow(row)
    return buf.getvalue()


def render_summary(summary: dict[str, Any]) -> str:
    mods = summary["modalities"]
    lines = [f"# Modality contributions: {summary['run']} ({summary['split']}, {summary['samples']} samples)", "",
             f"Shapley value of each modality for the {summary['value']} of the predicted class "
             f"({'exact' if summary['exact'] else 'permutation estimate'}): mean |value| per true class and its share.", "",
             "| class | n | " + " | ".join(f"{m} mean abs (share)" for m in mods) + " |", "|---|---|" + "---|" * len(mods)]
    for row in summary["classes"]:
        lines.append(f"| {row['class']} | {row['n']} | " + " | ".join(f"{row['mean_abs'][m]:.3f} ({100 * row['share'][m]:.0f}%)" for m in mods) + " |")
    if summary["exact"] and len(mods) > 1:
        pairs = list(summary["classes"][-1]["interaction"])
        lines += ["", "Mean pairwise interaction (> 0 synergy, < 0 redundancy):", "", "| class | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
        for row in summary["classes"]:
            lines.append(f"| {row['class']} | " + " | ".join(f"{row['interaction'][p]:+.3f}" for p in pairs) + " |")
    return "\n".join(lines) + "\n"


def _plots(result: dict[str, Tensor], summary: dict[str, Any], out: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    mods, rows = summary["modalities"], summary["classes"][:-1]
    fig, ax = plt.subplots(figsize=(min(12, max(4, 0.6 * len(rows) * len(mods))), 3))
    width = 0.8 / len(mods)
    for i, m in enumerate(mods):
        ax.bar([k + i * width for k in range(len(rows))], [r["mean"][m] for r in rows], width, label=m)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(rows))], [r["class"] for r in rows])
    ax.set_ylabel(f"mean Shapley value ({summary['value']})")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    save_figure_atomic(fig, out / "shapley_classes.png")
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.6 * len(mods)))
    g = torch.Generator().manual_seed(0)
    for i, m in enumerate(mods):
        values = result["phi"][:, i]
        ax.scatter(values.numpy(), (i + 0.15 * torch.randn(len(values), generator=g)).numpy(), s=4, alpha=0.5)
    ax.set_yticks(range(len(mods)), mods)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel(f"Shapley value per sample ({summary['value']} of the predicted class)")
    save_figure_atomic(fig, out / "shapley_samples.png")
    if "interaction" in result and len(mods) > 1:
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(mods), 0.8 + 0.8 * len(mods)))
        matrix = result["interaction"].mean(0).numpy()
        bound = float(abs(matrix).max()) or 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(mods)), mods, rotation=45)
        ax.set_yticks(range(len(mods)), mods)
        fig.colorbar(image, ax=ax, label="mean interaction")
        save_figure_atomic(fig, out / "interaction.png")
