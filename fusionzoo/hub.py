"""Trained models as folders in the Hugging Face Hub layout: load them, and write them with a model card.

A folder holds ``config.yaml`` (``{model: ...}``, the section the model is built from),
``model.safetensors``, ``README.md`` (the model card: YAML front matter for the Hub, then the task,
data, modalities, training recipe, the test metrics under every subset of modalities, the command
that made it and its limitations), ``card.json`` (the same record, for programs) and, when the data
fitted something on its training split, ``data_state.json`` (label list, vocabularies). Nothing here
needs the network; ``huggingface_hub.upload_folder`` can publish such a folder as it is.

* :func:`from_pretrained` loads a folder, a run folder (its selected checkpoint), a checkpoint
  folder or the name of a shipped model (:mod:`fusionzoo.zoo`), checking the weights against the
  config first (the first missing, unexpected or misshapen tensor is named);
* :func:`save_run` writes a trained run as such a folder, evaluating it on its test split under
  every subset of its modalities for the card;
* :func:`evaluate_folder` recomputes a folder's headline test metric the way its card was made.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from fusionzoo.config import build_dataset, build_model, load_config
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.errors import CheckpointError
from fusionzoo.models.multimodal import MultimodalModel
from fusionzoo.encoders.text import attach_vocabularies
from fusionzoo.models.saved_encoders import load_encoder_overrides
from fusionzoo.vocab import vocabularies_of
from fusionzoo.registry import MODELS
from fusionzoo.training.checkpoint import DATA_STATE, load_data_state, load_run, load_run_config, resolve_checkpoint
from fusionzoo.training.evaluate import evaluate
from fusionzoo.training.explain import explain_run
from fusionzoo.training.robustness import evaluate_run
from fusionzoo.training.tasks import get_task

__all__ = ["from_pretrained", "save_run", "evaluate_folder", "is_pretrained_folder", "read_card", "input_shapes", "CARD"]

CARD = "card.json"


def is_pretrained_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.yaml").is_file() and (path / "model.safetensors").is_file() and not (path / "manifest.json").is_file()


def from_pretrained(source: str | Path) -> MultimodalModel:
    """A trained model in eval mode from a saved folder, a run folder (its selected checkpoint), a
    checkpoint folder, or the name of a shipped model (``fusionzoo list models``)."""
    path = _resolve(source)
    if not path.exists():
        known = ", ".join(MODELS.list(tag="pretrained")) or "none"
        raise FileNotFoundError(f"from_pretrained: {source!r} is neither a folder nor a shipped model (shipped: {known})")
    if is_pretrained_folder(path):
        return _load_folder(path)
    model, _, _ = load_run(path)
    return model


def _resolve(source: str | Path) -> Path:
    """The folder ``source`` names. One rule, as ``create_model``'s: a bare name of a shipped model
    (a string without a path separator) is that model, even where a folder of that name exists
    here; anything else is a path (write ``./name`` for such a folder)."""
    path = Path(source)
    if isinstance(source, str) and "/" not in source and source in MODELS:
        return getattr(MODELS.get(source).fn, "pretrained_folder", path)
    return path


def _load_folder(folder: Path) -> MultimodalModel:
    cfg = load_config(folder / "config.yaml")
    overrides = load_encoder_overrides(folder)
    header = _weight_header(folder / "model.safetensors")
    try:  # the model's shapes without its memory: a config asking for an enormous width is caught here
        with torch.device("meta"):
            skeleton = build_model(cfg, overrides)
    except Exception:  # noqa: BLE001 - an encoder that reads files as it is built: checked once built
        skeleton = None
    if skeleton is not None:
        _check_weights(skeleton, header, folder)
    torch.manual_seed(0)
    model = build_model(cfg, overrides)
    _check_weights(model, header, folder)
    expected = model.state_dict()
    doubles = [k for k, (_, dtype) in header.items() if dtype == "F64" and expected[k].dtype != torch.float64]
    if doubles:
        warnings.warn(f"{folder / 'model.safetensors'}: {len(doubles)} weights stored as float64 ({doubles[0]!r}, ...) are cast to the "
                      "model's dtype", stacklevel=3)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    state = folder / DATA_STATE
    if state.is_file():
        attach_vocabularies(model.encoders, vocabularies_of(json.loads(state.read_text())))
    return model.eval()


def _weight_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` of a safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def _check_weights(model: torch.nn.Module, header: dict[str, tuple[tuple[int, ...], str]], folder: Path) -> None:
    """The config's model (its shapes, on the meta device or built) and the weights (their header)
    agree: the first key that does not is named; floating-point weights stored as integers or bools
    are refused."""
    expected = model.state_dict()
    where = f"{folder}: model.safetensors does not match config.yaml"
    for key, tensor in expected.items():
        if key not in header:
            raise CheckpointError(f"{where}: {key!r} (shape {list(tensor.shape)}) is missing from the weights")
        shape, dtype = header[key]
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{where}: {key!r} has shape {list(shape)} in the weights, {list(tensor.shape)} in the model")
        if tensor.dtype.is_floating_point and dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{folder / 'model.safetensors'}: {key!r} is stored as {dtype}, not as floating-point weights")
    for key in header:
        if key not in expected:
            raise CheckpointError(f"{where}: the weights hold {key!r}, which the model built from config.yaml has no place for")


#: safetensors dtype names of floating-point tensors.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def read_card(folder: str | Path) -> dict[str, Any]:
    """The machine-readable model card (``card.json``) of a saved folder."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CARD}: it was not written by fusionzoo.hub.save_run")
    return json.loads(path.read_text())


def evaluate_folder(folder: str | Path, data_overrides: dict[str, Any] | None = None, batch_size: int = 256) -> dict[str, float]:
    """The test metrics of a saved folder with every modality, computed as its card's were: the
    card's ``data`` section (``data_overrides`` updates it, e.g. another ``root``), its test split,
    batches of ``batch_size``."""
    card = read_card(folder)
    model = from_pretrained(folder)
    data = {**card["data"], **(data_overrides or {})}
    cfg = load_config({"data": data, "model": model.config})
    fitted = json.loads((Path(folder) / DATA_STATE).read_text()) if (Path(folder) / DATA_STATE).is_file() else None
    test_set = build_dataset(cfg, "test", fitted)
    return evaluate(model, make_loader(test_set, batch_size, preprocess=preprocessors(model.encoders)), get_task(test_set))


def save_run(
    run: str | Path, folder: str | Path, *, name: str | None = None, command: str | None = None, limitations: str = "",
    merge_adapters: bool = False, overwrite: bool = False,
) -> Path:
    """Write a trained run (its selected checkpoint) as a saved folder with its model card; returns the
    folder, replaced whole (``save_pretrained``: a folder with other files is refused unless
    ``overwrite``; never the run folder). ``merge_adapters`` folds LoRA / IA3 adapters into the base
    weights (see ``save_pretrained``)."""
    run_dir, _ = resolve_checkpoint(run)
    target = Path(folder).resolve()
    if target == run_dir.resolve() or run_dir.resolve() in target.parents or target in run_dir.resolve().parents:
        raise ValueError(f"save_run: {folder} is the run folder {run_dir}, or inside or above it: a saved model goes into a folder of its own")
    model, cfg, _ = load_run(run)
    if not isinstance(model, MultimodalModel):
        raise ValueError(f"save_run: {run_dir} is an alignment run; only classifiers (model: configs) are saved as pretrained folders")
    with tempfile.TemporaryDirectory() as tmp:  # evaluate_run and explain_run write files; the card keeps what it needs
        result = evaluate_run(run, levels=(0.0,), out_dir=tmp)
        explained = explain_run(run, out=Path(tmp) / "explain")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = {
        "name": name or run_dir.name,
        "task": result["task"],
        "metric": result["metric"],
        "modalities": list(model.modalities),
        "data": dict(cfg.raw["data"]),
        "train": dict(cfg.raw.get("train") or {}),
        "seed": cfg.seed,
        "selected_epoch": metrics.get("selected_epoch"),
        "val": metrics.get("val"),
        "test": result["subsets"][0],
        "subsets": result["subsets"],
        "params": result["params"],
        "command": command or f"fusionzoo train {shlex.quote(str(cfg.origin))}",
        "limitations": limitations,
        "contributions": {k: explained[k] for k in ("value", "explained", "unit", "classes")},
        "fusionzoo": _version(),
    }
    state = load_data_state(run_dir)
    record["input_shapes"] = _input_shapes(cfg, state, model)
    files = {CARD: json.dumps(record, indent=1)}
    if state is not None:
        files[DATA_STATE] = json.dumps(state, indent=1)
    model.save_pretrained(folder, card=render_card(record), files=files, merge_adapters=merge_adapters, overwrite=overwrite)
    return Path(folder)


def _version() -> str:
    try:
        return version("fusionzoo")
    except PackageNotFoundError:
        return "unknown"


def _input_shapes(cfg: Any, fitted: dict | None, model: Any) -> dict[str, list[int]]:
    """Per modality, the largest input of a test sample, dimension by dimension (the longest clip, the
    longest caption): what ``fusionzoo export`` fixes image sizes and waveform lengths to. A
    modality whose preprocessing gives a dict (token ids and mask) has no single shape and is left out."""
    shapes: dict[str, list[int]] = {}
    for batch in make_loader(build_dataset(cfg, "test", fitted), 256, preprocess=preprocessors(model.encoders)):
        for m in model.modalities:
            if m in batch and isinstance(batch[m], torch.Tensor):
                shape = list(batch[m].shape[1:])
                shapes[m] = [max(a, b) for a, b in zip(shapes.get(m, shape), shape)]
    return shapes


def input_shapes(source: str | Path, model: Any = None) -> dict[str, list[int]] | None:
    """The per-sample input shapes of the data a model was trained on: what a saved folder's card
    records, or for a run folder what its test split holds (``model``: the run's, if loaded
    already); None for a folder with neither."""
    folder = _resolve(source)
    if (folder / CARD).is_file():
        return read_card(folder).get("input_shapes")
    if is_pretrained_folder(folder) or not folder.is_dir():
        return None
    run_dir, _ = resolve_checkpoint(folder)
    model = model if model is not None else load_run(folder)[0]
    return _input_shapes(load_run_config(run_dir), load_data_state(run_dir), model)


def _contributions_section(record: dict[str, Any]) -> str:
    """The card's table of each modality's share of the prediction per class (``fusionzoo explain``)."""
    found = record.get("contributions")
    if not found:
        return ""
    mods, unit = record["modalities"], found.get("unit", "class")
    rows = "\n".join(f"| {r['class']} | {r['n']} | " + " | ".join(f"{100 * r['share'][m]:.0f}%" for m in mods) + " |" for r in found["classes"])
    explained = found.get("explained", f"the predicted class's {found['value']}")
    return (
        "## What each modality contributes\n\n"
        f"Each modality's share of the mean |Shapley value| of {explained} on the test split, "
        f"{'per true class' if unit == 'class' else 'per ' + unit} (`fusionzoo explain`: exact, over every subset of modalities).\n\n"
        f"| {unit} | samples | {' | '.join(mods)} |\n|---|---:|" + "---:|" * len(mods) + f"\n{rows}\n\n"
    )


def render_card(record: dict[str, Any]) -> str:
    """The model card (``README.md``) of a :func:`save_run` record."""
    metric = record["metric"]
    show = (lambda v: f"{100 * v:.1f}%") if metric in ("accuracy", "mAP", "micro_f1") else (lambda v: f"{v:.4f}")
    front = {
        "library_name": "fusionzoo",
        "tags": ["multimodal", "fusion", *record["modalities"]],
        "datasets": [record["data"].get("name")],
        "metrics": [metric],
        "model-index": [{"name": record["name"], "results": [{"task": {"type": record["task"]}, "metrics": [{"type": metric, "value": round(record["test"][metric], 4), "name": f"test {metric}"}]}]}],
    }
    subsets = "\n".join(f"| {' + '.join(r['modalities'])} | {show(r[metric])} | {r['n']} |" for r in record["subsets"])
    data = ", ".join(f"{k}: {v}" for k, v in record["data"].items())
    train = ", ".join(f"{k}: {v}" for k, v in record["train"].items())
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {record['name']}

A fusionzoo {record['task']} model over {', '.join(record['modalities'])} ({record['params']:,} parameters).

```python
import fusionzoo as fz
model = fz.from_pretrained("{record['name']}")   # or the folder this card is in
logits = model(batch)                            # batch: {{modality: tensor, "present": {{modality: bool [B]}}}}
```

## Data

{data}

## Training recipe

{train}; seed {record['seed']}; the checkpoint of epoch {record['selected_epoch']} was selected on the validation split.

Made with `{record['command']}` (fusionzoo {record['fusionzoo']}).

## Test {metric} under every subset of modalities

Each row hides the other modalities from the model (the missing-modality path every fusionzoo block has).

| modalities seen | {metric} | samples |
|---|---:|---:|
{subsets}

{_contributions_section(record)}## Limitations

{record['limitations'] or 'Trained on one dataset with one seed: the numbers above say how it does on that test split, not elsewhere.'}
"""
