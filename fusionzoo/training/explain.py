"""``fusionzoo explain``: each modality's Shapley value for every prediction of a split, and a summary.

For each sample, the value of a subset of modalities is the model's output (by default the logit of
the class in question) with only that subset present (:mod:`fusionzoo.training.shapley`). The values
are computed for the predicted class and for the true class; with them the pairwise interaction
index (synergy > 0, redundancy < 0) of every pair of modalities, for the predicted class.

``explain_run`` writes into ``<run>/explain/<split>/`` (or ``out``):

* ``shapley.csv``: one row per sample: its index in the split, its row in the data file where the
  dataset knows it (the manifest's line), label, prediction, ``v(all)`` and ``v(none)``, one column
  per modality (``phi:<m>``, predicted class), one per modality for the true class
  (``phi_true:<m>``) and one per pair (``interaction:<a>+<b>``); for the ``attention``,
  ``transformer``, ``bottleneck`` and ``cross_attention`` blocks also what their attention reads
  (``attention:<m>``, ``attention:<t><-<s>``: weights the block computed, not attributions;
  :mod:`fusionzoo.training.attention_maps`);
* ``summary.md`` / ``summary.json``: per true class, the mean |value| of each modality and its share
  of the total, and the mean interaction of each pair;
* ``shapley_classes.png`` (mean contribution per class), ``shapley_samples.png`` (every sample's
  values, a strip per modality), ``interaction.png`` (the mean interaction matrix).

Multi-class runs explain the predicted and the true class; multi-label and regression runs every
output (each label's logit, probability or log-probability; each target's prediction), with columns
``label:<o>``, ``output:<o>``, ``v_none:<o>``, ``phi:<o>:<m>`` and ``interaction:<o>:<a>+<b>`` per
output ``o``, and the summary per label or target instead of per true class. Values are exact up
to ``exact_up_to`` modalities (``2^m`` fusion passes per batch, the encoders once); above it, the
permutation estimate with its standard error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fusionzoo.atomic import pyplot, save_figure_atomic, write_json_atomic, write_text_atomic
from fusionzoo.config import build_dataset
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.training.attention_maps import attention_readings
from fusionzoo.training.checkpoint import load_data_state, load_run, resolve_checkpoint
from fusionzoo.training.evaluate import move_batch
from fusionzoo.training.runfolder import claim_output
from fusionzoo.training.shapley import VALUES, exact_shapley, interaction_index, output_value, pattern_outputs, permutation_shapley, select_value
from fusionzoo.training.tasks import get_task

__all__ = ["explain", "explain_run", "summarize"]


@torch.no_grad()
def explain(
    model: torch.nn.Module, loader: Any, value: str | None = None, exact_up_to: int = 10, permutations: int = 64, task: str = "multiclass",
) -> dict[str, Tensor]:
    """Per-sample Shapley values of ``model``'s modalities over ``loader`` (``value`` defaults to
    ``logit``, ``output`` for regression; :data:`~fusionzoo.training.shapley.VALUES`).

    Multi-class: ``pred``, ``label`` ``[n]``, ``phi`` (predicted class) and ``phi_true`` ``[n, m]``,
    ``interaction`` ``[n, m, m]`` (exact only), ``v_all`` and ``v_none`` ``[n]`` (predicted class)
    and ``se`` ``[n, m]`` (zero when exact). Multi-label and regression: every output (label or
    target) is explained: ``pred`` (the outputs) and ``label`` ``[n, k]``, ``phi`` and ``se``
    ``[n, k, m]``, ``interaction`` ``[n, k, m, m]``, ``v_all`` and ``v_none`` ``[n, k]``.
    With them, for the attention blocks, ``attention:<name>`` ``[n]`` (:mod:`~fusionzoo.training.attention_maps`)."""
    task = get_task(task).name
    value = _check_value(task, value)
    if permutations < 1:
        raise ValueError(f"explain: permutations must be >= 1, got {permutations}")
    model.eval()
    device = next(model.parameters()).device
    m = len(model.modalities)
    exact = m <= exact_up_to
    parts: dict[str, list[Tensor]] = {}
    generator = torch.Generator().manual_seed(0)
    for batch in loader:
        batch = move_batch(batch, device)
        encoded = model.encode(batch)  # the encoders once per batch; every subset reuses their output
        logits = pattern_outputs(model, batch, None if exact else [0, (1 << m) - 1], encoded)  # [2^m or 2, b, c]
        pred, label, values = _values_of(task, value, logits[-1], batch["label"])
        got = {"pred": pred, "label": label}
        for key, value_of in values.items():
            v = value_of(logits)
            if exact:
                got[key] = exact_shapley(v)
            else:
                got[key], se = permutation_shapley(model, batch, value_of, permutations, generator, encoded)
            if key == "phi":
                got |= {"v_all": v[-1].double(), "v_none": v[0].double()}
                got |= {"interaction": interaction_index(v), "se": torch.zeros_like(got["phi"])} if exact else {"se": se}
        readings = attention_readings(model.fusion, *model.fusion.prepare(encoded[0], encoded[1] or None))
        got |= {f"attention:{k}": w for k, w in readings.items()}
        for k, t in got.items():
            parts.setdefault(k, []).append(t.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _check_value(task: str, value: str | None) -> str:
    value = VALUES[task][0] if value is None else value
    if value not in VALUES[task]:
        raise ValueError(f"explain: for a {task} run the value must be one of {', '.join(VALUES[task])}, got {value!r}")
    return value


def _values_of(task: str, value: str, logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor, dict[str, Callable[[Tensor], Tensor]]]:
    """``(pred, label, {key: logits [p, b, c] -> values [p, b, ...]})`` of one batch: the predicted and
    the true class for a multi-class run, every output for the others."""
    if task == "multiclass":
        pred = logits.argmax(-1)
        return pred, label, {"phi": lambda x: select_value(x, pred, value), "phi_true": lambda x: select_value(x, label.clamp(min=0), value)}
    return logits, label.reshape(label.shape[0], -1).float(), {"phi": lambda x: output_value(x, value)}


def summarize(result: dict[str, Tensor], modalities: tuple[str, ...], names: list[str] | None = None) -> dict[str, Any]:
    """Per true class (multi-class) or per output (label, target): the mean |phi| of each modality,
    its share of the sum, and the mean interaction of each pair; the last row is ``all``."""
    phi, inter = result["phi"], result.get("interaction")
    n = int(phi.shape[0])
    rows = []
    if phi.dim() == 2:
        labels = result["label"]
        for c in sorted(set(labels.tolist())):
            if c >= 0:
                keep = labels == c
                rows.append(_summary_row(phi[keep], None if inter is None else inter[keep], modalities, names[c] if names else str(c), int(keep.sum())))
        keep = labels >= 0
        rows.append(_summary_row(phi[keep], None if inter is None else inter[keep], modalities, "all", int(keep.sum())))
    else:
        for j in range(phi.shape[1]):
            rows.append(_summary_row(phi[:, j], None if inter is None else inter[:, j], modalities, names[j] if names else str(j), n))
        rows.append(_summary_row(phi.flatten(0, 1), None if inter is None else inter.flatten(0, 1), modalities, "all", n))
    return {"modalities": list(modalities), "classes": rows}


def _summary_row(phi: Tensor, inter: Tensor | None, modalities: tuple[str, ...], name: str, n: int) -> dict[str, Any]:
    mean_abs = phi.abs().mean(0)
    total = float(mean_abs.sum()) or 1.0
    row: dict[str, Any] = {"class": name, "n": n}
    row["mean_abs"] = {m: float(mean_abs[i]) for i, m in enumerate(modalities)}
    row["share"] = {m: float(mean_abs[i]) / total for i, m in enumerate(modalities)}
    row["mean"] = {m: float(phi[:, i].mean()) for i, m in enumerate(modalities)}
    if inter is not None:
        mean_inter = inter.mean(0)
        row["interaction"] = {f"{a}+{b}": float(mean_inter[i, j]) for (i, a), (j, b) in combinations(enumerate(modalities), 2)}
    return row


def explain_run(
    run: str | Path, split: str = "test", out: str | Path | None = None, samples: int | None = None, value: str | None = None,
    batch_size: int = 256, exact_up_to: int = 10, permutations: int = 64,
) -> dict[str, Any]:
    """Explain a trained run's predictions on ``split`` and write the files of the module docstring; returns the summary."""
    run_dir, _ = resolve_checkpoint(run)
    out = claim_output(Path(out) if out is not None else run_dir / "explain" / split, EXPLAIN_FILES, "explain")
    model, cfg, _ = load_run(run)
    if cfg.kind != "model":
        raise ValueError(f"explain: {run_dir} is an alignment run; explain takes a model with a head")
    dataset = build_dataset(cfg, split, load_data_state(run_dir))
    task = get_task(dataset).name
    value = _check_value(task, value)
    if samples is not None:
        if samples < 1:
            raise ValueError(f"explain: --samples must be >= 1, got {samples}")
        if hasattr(dataset, "take"):  # a stream: its first samples in shard order
            dataset = dataset.take(samples)
        else:
            dataset = torch.utils.data.Subset(dataset, range(min(samples, len(dataset))))
    loader = make_loader(dataset, batch_size, preprocess=preprocessors(model.encoders))
    result = explain(model, loader, value, exact_up_to, permutations, task)
    names = _output_names(task, getattr(dataset, "dataset", dataset), result)
    summary = summarize(result, model.modalities, names) | {
        "run": str(run_dir), "split": split, "task": task, "value": value, "explained": EXPLAINED[task].format(value=value),
        "unit": {"multiclass": "class", "multilabel": "label", "regression": "target"}[task],
        "exact": "interaction" in result, "samples": int(result["label"].shape[0]),
    }
    write_text_atomic(out / "shapley.csv", _csv(result, model.modalities, dataset, names))
    write_json_atomic(out / "summary.json", summary, indent=1)
    write_text_atomic(out / "summary.md", render_summary(summary))
    _plots(result, summary, out)
    return summary


#: The files ``explain_run`` writes.
EXPLAIN_FILES = ("shapley.csv", "summary.json", "summary.md", "shapley_classes.png", "shapley_samples.png", "interaction.png")

#: What the values explain, per task (``summary["explained"]``).
EXPLAINED = {"multiclass": "the {value} of the predicted class", "multilabel": "each label's {value}", "regression": "each target's prediction"}


def _output_names(task: str, dataset: Any, result: dict[str, Tensor]) -> list[str] | None:
    """The class names (multi-class, multi-label: the dataset's ``classes``) or target names of the outputs."""
    classes = getattr(dataset, "classes", None)
    if task != "regression":
        return list(map(str, classes)) if classes else None
    k = result["phi"].shape[1]
    return ["target"] if k == 1 else [f"target{j}" for j in range(k)]


def _csv(result: dict[str, Tensor], modalities: tuple[str, ...], dataset: Any, names: list[str] | None = None) -> str:
    base = getattr(dataset, "dataset", dataset)
    indices = list(getattr(dataset, "indices", range(len(result["label"]))))
    line_of = getattr(base, "line_of", None)
    columns = _columns(result, modalities, names)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "row"] + [name for name, _, _ in columns])
    for k, idx in enumerate(indices):
        writer.writerow([idx, line_of(idx) if line_of else ""] + [format(values[k].item(), spec) for _, values, spec in columns])
    return buf.getvalue()


def _columns(result: dict[str, Tensor], modalities: tuple[str, ...], names: list[str] | None) -> list[tuple[str, Tensor, str]]:
    """``(header, values [n], format)`` of every column of ``shapley.csv`` after the index and the row."""
    exact = "interaction" in result
    pairs = list(combinations(range(len(modalities)), 2))

    def per_modality(key: str, values: Tensor, spec: str = ".6g") -> list[tuple[str, Tensor, str]]:
        return [(f"{key}{m}", values[:, i], spec) for i, m in enumerate(modalities)]

    def per_pair_or_se(tag: str, j: Any = ...) -> list[tuple[str, Tensor, str]]:
        if not exact:
            return per_modality(f"se:{tag}", result["se"][:, j], ".3g")
        inter = result["interaction"][:, j]
        return [(f"interaction:{tag}{modalities[a]}+{modalities[b]}", inter[:, a, b], ".6g") for a, b in pairs]

    if result["phi"].dim() == 2:  # multi-class: the values of the predicted and of the true class
        columns = [("label", result["label"], "d"), ("prediction", result["pred"], "d"),
                   ("v_all", result["v_all"], ".6g"), ("v_none", result["v_none"], ".6g")]
        columns += per_modality("phi:", result["phi"]) + per_modality("phi_true:", result["phi_true"]) + per_pair_or_se("")
    else:  # every output: its label, prediction, the value with nothing present, and its values
        columns = []
        for j, o in enumerate(names or [str(j) for j in range(result["phi"].shape[1])]):
            columns += [(f"label:{o}", result["label"][:, j], ".6g"), (f"output:{o}", result["v_all"][:, j], ".6g"),
                        (f"v_none:{o}", result["v_none"][:, j], ".6g")]
            columns += per_modality(f"phi:{o}:", result["phi"][:, j]) + per_pair_or_se(f"{o}:", j)
    return columns + [(k, result[k], ".4g") for k in result if k.startswith("attention:")]


def render_summary(summary: dict[str, Any]) -> str:
    mods, unit = summary["modalities"], summary.get("unit", "class")
    per = "per true class" if unit == "class" else f"per {unit}"
    lines = [f"# Modality contributions: {summary['run']} ({summary['split']}, {summary['samples']} samples)", "",
             f"Shapley value of each modality for {summary.get('explained', 'the ' + summary['value'] + ' of the predicted class')} "
             f"({'exact' if summary['exact'] else 'permutation estimate'}): mean |value| {per} and its share.", "",
             f"| {unit} | n | " + " | ".join(f"{m} mean abs (share)" for m in mods) + " |", "|---|---|" + "---|" * len(mods)]
    for row in summary["classes"]:
        lines.append(f"| {row['class']} | {row['n']} | " + " | ".join(f"{row['mean_abs'][m]:.3f} ({100 * row['share'][m]:.0f}%)" for m in mods) + " |")
    if summary["exact"] and len(mods) > 1:
        pairs = list(summary["classes"][-1]["interaction"])
        lines += ["", "Mean pairwise interaction (> 0 synergy, < 0 redundancy):", "", f"| {unit} | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
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
    ax.set_xlabel(summary.get("unit", "class"))
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    save_figure_atomic(fig, out / "shapley_classes.png")
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.6 * len(mods)))
    g = torch.Generator().manual_seed(0)
    for i, m in enumerate(mods):
        values = result["phi"][..., i].flatten()  # every sample (and output)
        ax.scatter(values.numpy(), (i + 0.15 * torch.randn(len(values), generator=g)).numpy(), s=4, alpha=0.5)
    ax.set_yticks(range(len(mods)), mods)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel(f"Shapley value per sample ({summary.get('explained', summary['value'])})")
    save_figure_atomic(fig, out / "shapley_samples.png")
    if "interaction" in result and len(mods) > 1:
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(mods), 0.8 + 0.8 * len(mods)))
        matrix = result["interaction"].flatten(0, -3).mean(0).numpy()  # over samples (and outputs)
        bound = float(abs(matrix).max()) or 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(mods)), mods, rotation=45)
        ax.set_yticks(range(len(mods)), mods)
        fig.colorbar(image, ax=ax, label="mean interaction")
        save_figure_atomic(fig, out / "interaction.png")
