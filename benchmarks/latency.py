"""Batch-1 inference latency (the serving case): eager, ``torch.compile`` and ``torch.export``.

    python benchmarks/latency.py                      # quickstart + avdigits_concat_hard, writes benchmarks/results/<tag>/
    python benchmarks/latency.py --configs configs/experiments/quickstart.yaml --threads 1

Each model is built from its config (random weights: latency does not depend on them) in eval mode
and called on one real sample of its dataset's test split (the avdigits one needs the shared data),
collated as the loader does, with every modality present and with one missing. Modes:

* ``eager``: ``torch.no_grad()`` forward;
* ``compile``: ``torch.compile(model)`` (inductor), timed after its first call; the compile time is
  reported on its own;
* ``export``: ``torch.export.export(model, (batch,))``, its ``.module()`` called as the model;
* ``onnxruntime``: the model exported to ONNX by ``fusionzoo.export`` at this sample's shapes, run by
  ONNX Runtime's CPU provider at the same thread count (with the ``export`` extra installed).

Time is the median of ``torch.utils.benchmark.Timer`` blocked runs at ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusionzoo.bench import machine_info, machine_tag, script_command, time_callable, write_report  # noqa: E402
from fusionzoo.config import build_dataset, build_model, load_config  # noqa: E402
from fusionzoo.data import collate  # noqa: E402
from fusionzoo.export import ServingModel, export_onnx  # noqa: E402

DEFAULT_CONFIGS = ["configs/experiments/quickstart.yaml", "configs/experiments/avdigits_concat_hard.yaml"]


def one_sample(cfg) -> dict:
    dataset = build_dataset(cfg, "test")
    return collate([dataset[0]])


def without(batch: dict, modality: str) -> dict:
    """``batch`` with ``modality`` marked missing (its input kept, as a loader would deliver it)."""
    present = dict(batch["present"])
    present[modality] = torch.zeros_like(present[modality])
    return {**batch, "present": present}


MODES = ("eager", "compile", "export", "onnxruntime")


def measure(model, batch: dict, min_time: float, modes: tuple[str, ...] = MODES) -> dict:
    out = {}
    with torch.no_grad():
        reference = model(batch)
        out["eager_ms"] = time_callable(lambda: model(batch), "cpu", min_time)[0] * 1e3
    if "compile" in modes:
        out.update(_compiled(model, batch, reference, min_time))
    if "export" in modes:
        out.update(_exported(model, batch, reference, min_time))
    if "onnxruntime" in modes and importlib.util.find_spec("onnxruntime") is not None:
        out.update(_onnxruntime(model, batch, reference, min_time))
    return out


def _onnxruntime(model, batch: dict, reference: torch.Tensor, min_time: float) -> dict:
    """ONNX Runtime (CPU provider) on the model exported by ``fusionzoo.export`` at this batch's shapes."""
    import onnxruntime

    serving = ServingModel(model)
    shapes = {m: list(batch[m].shape[1:]) for m in serving.modalities}
    values = {**{m: batch[m] for m in serving.modalities}, **{f"{m}_lengths": batch[f"{m}_lengths"] for m in serving.lengths},
              **{f"present_{m}": batch["present"][m] for m in serving.modalities}}
    feed = {name: values[name].numpy() for name in serving.input_names}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx", shapes)
        seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], feed)
    return {
        "onnxruntime_s": seconds,
        "onnxruntime_ms": time_callable(lambda: session.run(["logits"], feed), "cpu", min_time)[0] * 1e3,
        "onnxruntime_max_abs_diff": float((torch.from_numpy(out) - reference).abs().max()),
    }


def _compiled(model, batch: dict, reference: torch.Tensor, min_time: float) -> dict:
    out = {}
    with torch.no_grad():
        start = time.perf_counter()
        compiled = torch.compile(model)
        compiled(batch)
        out["compile_s"] = time.perf_counter() - start
        out["compile_ms"] = time_callable(lambda: compiled(batch), "cpu", min_time)[0] * 1e3
        out["compile_max_abs_diff"] = float((compiled(batch) - reference).abs().max())
    return out


def _exported(model, batch: dict, reference: torch.Tensor, min_time: float) -> dict:
    out = {}
    start = time.perf_counter()
    exported = torch.export.export(model, (batch,)).module()
    out["export_s"] = time.perf_counter() - start
    with torch.no_grad():
        out["export_ms"] = time_callable(lambda: exported(batch), "cpu", min_time)[0] * 1e3
        out["export_max_abs_diff"] = float((exported(batch) - reference).abs().max())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of eager,compile,export")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for config in args.configs:
        cfg = load_config(ROOT / config)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        batch = one_sample(cfg)
        cases = {"all present": batch, f"{model.modalities[0]} missing": without(batch, model.modalities[0])}
        for case, b in cases.items():
            torch._dynamo.reset()
            modes = tuple(args.modes.split(","))
            row = {"config": config, "case": case, "params": sum(p.numel() for p in model.parameters()), **measure(model, b, args.min_time, modes)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    payload = {"machine": machine_info(), "threads": args.threads, "command": script_command("latency.py", argv), "rows": rows}
    write_report(args.out or ROOT / "benchmarks" / "results" / machine_tag(), "latency", payload, render(payload))
    return 0


def render(payload: dict) -> str:
    lines = [
        "# Batch-1 inference latency",
        "",
        f"`{payload['command']}` on {payload['machine']['cpu']}, {payload['threads']} threads, torch {payload['machine']['torch']}; "
        "median of blocked runs, one real test sample.",
        "",
        "| model | case | eager ms | torch.compile ms (compile s) | torch.export ms | ONNX Runtime ms | max abs diff compile / export / ORT |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in payload["rows"]:
        compiled = f"{r['compile_ms']:.2f} ({r['compile_s']:.0f})" if "compile_ms" in r else "-"
        exported = f"{r['export_ms']:.2f}" if "export_ms" in r else "-"
        ort = f"{r['onnxruntime_ms']:.2f}" if "onnxruntime_ms" in r else "-"
        diffs = " / ".join(f"{r[k]:.1e}" if k in r else "-" for k in ("compile_max_abs_diff", "export_max_abs_diff", "onnxruntime_max_abs_diff"))
        lines.append(f"| `{Path(r['config']).stem}` | {r['case']} | {r['eager_ms']:.2f} | {compiled} | {exported} | {ort} | {diffs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
