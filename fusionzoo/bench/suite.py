"""Benchmark suites: which targets, which variants, and the tables and plots they produce.

``run_suite`` measures, for every selected target and variant, the forward pass and the
forward+backward pass (and, for models, a whole AdamW training step) and writes JSON, CSV, a
markdown table and PNG plots under ``out``.
"""

from __future__ import annotations

import fnmatch

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionzoo.atomic import pyplot, save_figure_atomic
from fusionzoo.bench.measure import (
    Measurement,
    bench_callable,
    build_encoder,
    build_fusion,
    fusion_inputs,
    human_bytes,
    machine_info,
    matmul_peak,
    params_of,
    write_results,
)
from fusionzoo.config import build_model, load_config
from fusionzoo.registry import ENCODERS, FUSIONS

__all__ = ["run_suite", "SuiteOptions", "to_markdown", "TARGET_PCT"]

TARGET_PCT = 70.0
SWEEP_DIM, SWEEP_TENSOR_DIM, MAX_PRODUCT = 64, 4, 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SuiteOptions:
    """What to measure (plain attributes, filled from the CLI)."""

    def __init__(
        self,
        *,
        encoders: str | None = None,
        fusions: str | None = None,
        models: Sequence[str] = (),
        batch_sizes: Sequence[int] = (256,),
        device: str = "cpu",
        dtypes: Sequence[str] = ("float32",),
        compile: bool = False,
        channels_last: bool = False,
        modality_sweep: Sequence[int] = (),
        missing_sweep: Sequence[float] = (),
        min_time: float = 0.5,
        memory: bool = True,
        exclude: Sequence[str] = (),
    ) -> None:
        for d in dtypes:
            if d not in DTYPES:
                raise ValueError(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
        self.encoders, self.fusions, self.models = encoders, fusions, list(models)
        self.exclude = list(exclude)  # fnmatch patterns of encoder and fusion names left out
        self.batch_sizes, self.device, self.dtypes = list(batch_sizes), device, list(dtypes)
        self.compile, self.channels_last = compile, channels_last
        self.modality_sweep, self.missing_sweep = list(modality_sweep), list(missing_sweep)
        self.min_time, self.memory = min_time, memory


def _autocast(device: str, dtype: str):
    return torch.autocast(device.split(":")[0], dtype=DTYPES[dtype], enabled=dtype != "float32")


def _passes(module: nn.Module, call, params_module: nn.Module, device: str, dtype: str, with_step: bool):
    """``{mode: fn}`` for forward, forward+backward and (for models) a full AdamW step."""

    def forward():
        with torch.no_grad(), _autocast(device, dtype):
            call()

    def forward_counted():
        with _autocast(device, dtype):
            call()

    def forward_backward():
        params_module.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            out = call()
        out.float().square().mean().backward()

    fns = {"forward": (forward, forward_counted), "forward_backward": (forward_backward, None)}
    if with_step:
        opt = torch.optim.AdamW(params_module.parameters(), lr=1e-4)

        def train_step():
            forward_backward()
            opt.step()

        fns["train_step"] = (train_step, forward_backward)
    return fns


def _measure(records, base: dict, module, call, opts: SuiteOptions, peaks: dict, dtype: str, with_step: bool = False):
    for compiled in [False, True] if opts.compile else [False]:
        compile_s = None
        target_call = call
        if compiled:
            target_call = _Call(torch.compile(module), *call.args)
            start = time.perf_counter()
            with torch.no_grad(), _autocast(opts.device, dtype):
                target_call()
            compile_s = time.perf_counter() - start
        for mode, (fn, flops_fn) in _passes(module, target_call, module, opts.device, dtype, with_step).items():
            record = Measurement(dtype=dtype, compiled=compiled, compile_s=compile_s, params=params_of(module), mode=mode, **base)
            peak = peaks.get(dtype, peaks["float32"])
            records.append(bench_callable(record, fn, peak, opts.min_time, opts.memory, flops_fn))
            print(
                f"{record.kind:8s} {record.target:22s} {mode:16s} b={record.batch_size:<4d} {dtype:8s}"
                f"{' compiled' if compiled else ''} {str(record.variant or ''):30s} {record.median_ms:10.2f} ms"
                f"  {record.gflops_per_s:7.1f} GFLOP/s {record.pct_of_peak:5.1f}%",
                flush=True,
            )


def _selected(registry, pattern: str | None, exclude: Sequence[str]) -> list[str]:
    """The names ``pattern`` (comma-separated fnmatch patterns) selects, less those an ``exclude`` pattern matches."""
    names = sorted({n for p in pattern.split(",") if p.strip() for n in registry.list(p.strip())}) if pattern else []
    return [n for n in names if not any(fnmatch.fnmatchcase(n, x) for x in exclude)]


def _to(x, device: str):
    """A tensor, or a dict of them (at any depth), on ``device``."""
    return {k: _to(v, device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def _shape(x) -> list[int] | dict[str, list[int]]:
    return {k: list(v.shape) for k, v in x.items()} if isinstance(x, dict) else list(x.shape)


class _Call:
    """``module(*args)`` as a zero-argument callable that can be rebound to a compiled module."""

    def __init__(self, module, *args):
        self.module, self.args = module, args

    def __call__(self):
        return self.module(*self.args)


def run_suite(opts: SuiteOptions, out: Path, name: str, command: str) -> list[Measurement]:
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available on this machine: GPU benchmarks skipped")
    device = opts.device
    info = machine_info() | {"command": command, "device": device}
    peaks = {"float32": matmul_peak(device, torch.float32, min_time=opts.min_time)}
    if device.startswith("cuda"):
        peaks["bfloat16"] = matmul_peak(device, torch.bfloat16, min_time=opts.min_time)
    info["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
    records: list[Measurement] = [
        Measurement(target="matmul", kind="matmul", mode="forward", batch_size=0, device=device, dtype=k, gflops_per_s=v / 1e9, pct_of_peak=100.0)
        for k, v in peaks.items()
    ]
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)
    cuda_only = [d for d in opts.dtypes if d != "float32"]
    dtypes = opts.dtypes if device.startswith("cuda") else ["float32"]
    if cuda_only and not device.startswith("cuda"):
        print(f"note: {cuda_only} autocast is measured on CUDA only (bf16 matmul is slow on most CPUs)")

    _bench_fusions(records, opts, peaks, dtypes)
    _bench_encoders(records, opts, peaks, dtypes)
    _bench_models(records, opts, peaks, dtypes)

    markdown = to_markdown(records, info)
    paths = write_results(out, name, records, info, markdown)
    paths += _plots(records, out, name)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return records


def _bench_fusions(records: list[Measurement], opts: SuiteOptions, peaks: dict[str, float], dtypes: list[str]) -> None:
    """Every selected block per batch size and dtype, then its modality and missing-rate sweeps."""
    device = opts.device
    for fusion in _selected(FUSIONS, opts.fusions, opts.exclude):
        for batch in opts.batch_sizes:
            torch.manual_seed(0)
            block = build_fusion(fusion).to(device).train()
            feats, present = fusion_inputs(block, batch, device)
            for dtype in dtypes:
                base = {"target": fusion, "kind": "fusion", "batch_size": batch, "device": device, "variant": {"in_dims": block.in_dims}}
                _measure(records, base, block, _Call(block, feats, present), opts, peaks, dtype)
        for m in opts.modality_sweep:
            _sweep_modalities(records, fusion, m, opts, peaks)
        for rate in opts.missing_sweep:
            torch.manual_seed(0)
            block = build_fusion(fusion).to(device).train()
            feats, present = fusion_inputs(block, 64, device, missing_rate=rate)
            base = {"target": fusion, "kind": "fusion", "batch_size": 64, "device": device, "variant": {"missing_rate": rate}}
            _measure(records, base, block, _Call(block, feats, present), opts, peaks, "float32")


def _bench_encoders(records: list[Measurement], opts: SuiteOptions, peaks: dict[str, float], dtypes: list[str]) -> None:
    """Every selected encoder per batch size and dtype (and channels-last on CUDA)."""
    device = opts.device
    for encoder in _selected(ENCODERS, opts.encoders, opts.exclude):
        for batch in opts.batch_sizes:
            torch.manual_seed(0)
            enc = build_encoder(encoder).to(device).train()
            x = _to(enc.example_input(batch), device)  # a tensor, or a preprocessed dict (token ids and mask)
            layouts = [False, True] if (opts.channels_last and device.startswith("cuda") and isinstance(x, torch.Tensor) and x.dim() == 4) else [False]
            for channels_last in layouts:
                if channels_last:
                    enc, x = enc.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
                for dtype in dtypes:
                    base = {"target": encoder, "kind": "encoder", "batch_size": batch, "device": device,
                            "variant": {"input": _shape(x), **({"channels_last": True} if channels_last else {})}}
                    _measure(records, base, enc, _Call(enc, x), opts, peaks, dtype)


def _bench_models(records: list[Measurement], opts: SuiteOptions, peaks: dict[str, float], dtypes: list[str]) -> None:
    """Every model config per batch size and dtype, with a full optimizer step."""
    device = opts.device
    for path in opts.models:
        cfg = load_config(path)
        for batch in opts.batch_sizes:
            torch.manual_seed(0)
            model = build_model(cfg).to(device).train()
            example = _to(model.example_input(batch), device)
            for dtype in dtypes:
                base = {"target": Path(path).stem, "kind": "model", "batch_size": batch, "device": device, "variant": {"config": str(path)}}
                _measure(records, base, model, _Call(model, example), opts, peaks, dtype, with_step=True)


def _sweep_modalities(records, fusion: str, m: int, opts: SuiteOptions, peaks) -> None:
    width = SWEEP_TENSOR_DIM if fusion == "tensor" else SWEEP_DIM
    dims = {f"m{i}": width for i in range(m)}
    base = {"target": fusion, "kind": "fusion", "batch_size": 64, "device": opts.device, "variant": {"num_modalities": m}}
    fixed = FUSIONS.get(fusion).num_modalities
    if fixed is not None and m != fixed:
        records.append(Measurement(**base, mode="forward_backward", note=f"skipped: {fusion} fuses exactly {fixed} modalities"))
        return
    if fusion == "tensor" and (width + 1) ** m > MAX_PRODUCT:
        records.append(Measurement(**base, mode="forward_backward", note=f"skipped: product dimension {(width + 1) ** m:,} > {MAX_PRODUCT:,}"))
        return
    if fusion == "cross_attention" and m < 2:
        return
    torch.manual_seed(0)
    block = build_fusion(fusion, in_dims=dims, out_dim=128).to(opts.device).train()
    feats, present = fusion_inputs(block, 64, opts.device)
    fn, _ = _passes(block, _Call(block, feats, present), block, opts.device, "float32", False)["forward_backward"]
    record = Measurement(**base, mode="forward_backward", params=params_of(block))
    records.append(bench_callable(record, fn, peaks["float32"], opts.min_time, opts.memory))
    print(f"fusion   {fusion:22s} modalities={m:<2d} {record.median_ms:10.2f} ms  {record.flops / 1e9:8.3f} GFLOP", flush=True)


def to_markdown(records: Sequence[Measurement], info: dict[str, Any]) -> str:
    peaks = ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in info["matmul_peak_gflops"].items())
    lines = [
        f"# Benchmarks on {info['cpu'] if info['device'] == 'cpu' else info['cuda_device']}",
        "",
        f"Command: `{info['command']}`  ",
        f"torch {info['torch']}, device {info['device']}, {info['threads']} threads. Measured matmul peak: **{peaks}**.",
        "FLOPs count matmuls, convolutions and attention (FlopCounterMode); elementwise work is not counted.",
        "",
    ]
    main = [r for r in records if r.kind != "matmul" and "num_modalities" not in r.variant and "missing_rate" not in r.variant]
    if main:
        lines += [
            "| kind | target | mode | batch | dtype | variant | params | GFLOP | ms (IQR) | GFLOP/s | % of peak | samples/s | peak mem |",
            "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in main:
            variant = " ".join(f"{k}={v}" for k, v in r.variant.items() if k not in ("in_dims", "config"))
            comp = " compiled" if r.compiled else ""
            lines.append(
                f"| {r.kind} | {r.target} | {r.mode} | {r.batch_size} | {r.dtype}{comp} | {variant} | {r.params:,} | {r.flops / 1e9:.3f} | "
                f"{r.median_ms:.2f} ({r.iqr_ms:.2f}) | {r.gflops_per_s:.1f} | {r.pct_of_peak:.0f}% | {r.samples_per_s:.0f} | {human_bytes(r.peak_memory_bytes)} |"
            )
        compiled = [r for r in main if r.compile_s is not None and r.mode == "forward"]
        if compiled:
            lines += ["", "Compile time (first call, inductor): " + ", ".join(f"{r.target} {r.compile_s:.1f} s" for r in compiled)]
    sweep = [r for r in records if "num_modalities" in r.variant]
    if sweep:
        ms = sorted({r.variant["num_modalities"] for r in sweep})
        lines += ["", "## Cost against the number of modalities (forward+backward, batch 64, 64 features each; tensor: 4)", "",
                  "| block | " + " | ".join(f"{m} mod. ms / GFLOP" for m in ms) + " |", "|---|" + "---:|" * len(ms)]
        for target in dict.fromkeys(r.target for r in sweep):
            cells = []
            for m in ms:
                r = next((r for r in sweep if r.target == target and r.variant["num_modalities"] == m), None)
                cells.append("-" if r is None else (r.note.split(":")[0] if r.note else f"{r.median_ms:.1f} / {r.flops / 1e9:.3f}"))
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
    missing = [r for r in records if "missing_rate" in r.variant]
    if missing:
        rates = sorted({r.variant["missing_rate"] for r in missing})
        lines += ["", "## Missing-modality rate (batch 64, reference dims; ms per pass)", "",
                  "| block | mode | " + " | ".join(f"rate {x}" for x in rates) + " |", "|---|---|" + "---:|" * len(rates)]
        for target in dict.fromkeys(r.target for r in missing):
            for mode in ("forward", "forward_backward"):
                cells = [f"{next(r.median_ms for r in missing if r.target == target and r.mode == mode and r.variant['missing_rate'] == x):.2f}" for x in rates]
                lines.append(f"| {target} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(records: Sequence[Measurement], out: Path, name: str) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    paths = []
    main = [r for r in records if r.kind != "matmul" and not r.variant.get("num_modalities") and "missing_rate" not in r.variant and not r.compiled and r.dtype == "float32"]
    fb = [r for r in main if r.mode == "forward_backward"]
    batches = sorted({r.batch_size for r in fb})
    if len(batches) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for target in dict.fromkeys(r.target for r in fb):
            pts = sorted((r.batch_size, r.median_ms) for r in fb if r.target == target)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=target)
        ax.set_xscale("log", base=2), ax.set_yscale("log"), ax.set_xlabel("batch"), ax.set_ylabel("fwd+bwd ms")
        ax.legend(fontsize=6, ncol=2)
        paths.append(save_figure_atomic(fig, out / f"{name}_time_vs_batch.png"))
    largest = [r for r in fb if r.batch_size == max(batches)] if batches else []
    if largest:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(largest) + 1.2))
        ax.barh([r.target for r in largest], [r.pct_of_peak for r in largest])
        ax.axvline(TARGET_PCT, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel("% of measured float32 matmul rate (fwd+bwd)")
        paths.append(save_figure_atomic(fig, out / f"{name}_pct_of_peak.png"))
    sweep = [r for r in records if r.variant.get("num_modalities") and not r.note]
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for target in dict.fromkeys(r.target for r in sweep):
            pts = sorted((r.variant["num_modalities"], r.flops) for r in sweep if r.target == target)
            ax.plot([p[0] for p in pts], [max(p[1], 1) for p in pts], marker="o", label=target)
        ax.set_yscale("log"), ax.set_xlabel("modalities"), ax.set_ylabel("fwd+bwd FLOPs")
        ax.legend(fontsize=6, ncol=2)
        paths.append(save_figure_atomic(fig, out / f"{name}_cost_vs_modalities.png"))
    return paths
