"""The benchmark harness: time registry entries and models, forward and forward+backward, against the
machine's measured matmul rate.

Legend: ``b`` batch, ``m`` modality, ``d`` features.

Timing: on the CPU ``torch.utils.benchmark.Timer`` (blocked runs, median and IQR, fixed thread
count); on CUDA, CUDA events around each of many repetitions after a warm-up. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention where it has a
formula; elementwise work is not counted). Peak memory: CUDA ``max_memory_allocated``; on Linux
CPUs the resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
resident set before the call.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusionzoo.atomic import write_text_atomic
from fusionzoo.fusion.base import example_features, example_present
from fusionzoo.registry import ENCODERS, FUSIONS, required_kwargs

__all__ = [
    "Measurement",
    "machine_info",
    "machine_tag",
    "matmul_peak",
    "time_callable",
    "count_flops",
    "peak_memory",
    "bench_callable",
    "build_encoder",
    "build_fusion",
    "fusion_inputs",
    "write_results",
    "script_command",
    "write_report",
    "REFERENCE_DIMS",
]

REFERENCE_DIMS = {"audio": 128, "text": 256, "visual": 512}
REFERENCE_TOKENS = 16


@dataclass
class Measurement:
    """One timed configuration of one target."""

    target: str
    kind: str  # encoder | fusion | model | matmul
    mode: str  # forward | forward_backward | train_step
    batch_size: int
    device: str
    dtype: str = "float32"
    compiled: bool = False
    variant: dict[str, Any] = field(default_factory=dict)
    median_ms: float = math.nan
    iqr_ms: float = math.nan
    flops: int = 0
    gflops_per_s: float = math.nan
    pct_of_peak: float = math.nan
    params: int = 0
    peak_memory_bytes: int | None = None
    samples_per_s: float = math.nan
    compile_s: float | None = None
    note: str = ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def machine_tag(device: str = "cpu") -> str:
    """A folder name for this machine's results: ``cpu-2t-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return "cuda-" + _slug(torch.cuda.get_device_name())
    return f"cpu-{torch.get_num_threads()}t-" + _slug(_cpu_model())


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_callable(fn: Callable[[], Any], device: str = "cpu", min_time: float = 1.0) -> tuple[float, float]:
    """``(median, IQR)`` in seconds of ``fn()``, after a warm-up."""
    fn()
    _sync(device)
    if not device.startswith("cuda"):
        from torch.utils.benchmark import Timer  # imported on use: importing it warns about CUDA_HOME

        m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_time)
        return m.median, m.iqr
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    deadline = time.perf_counter() + min_time
    while len(times) < 10 or (time.perf_counter() < deadline and len(times) < 1000):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times), q[2] - q[0]


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, _out_pad, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient of a convolution costs what its forward pass costs. torch 2.11's own formula
    multiplies grouped (depthwise) convolutions by the group count: 66x the forward for a 64-group
    3x3 conv instead of 2x."""
    forward = 2 * math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> int:
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], Any], device: str = "cpu") -> int | None:
    """Bytes of memory ``fn()`` needs at its peak beyond what was in use before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else max(0, peak - before) * 1024


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None, min_time: float = 1.0) -> float:
    """Measured FLOP/s of a large square matmul."""
    n = n or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    median, _ = time_callable(lambda: a @ b, device, min_time)
    return 2 * n**3 / median


def bench_callable(
    record: Measurement,
    fn: Callable[[], Any],
    peak: float,
    min_time: float,
    measure_memory: bool = True,
    flops_fn: Callable[[], Any] | None = None,
) -> Measurement:
    """Fill ``record`` with time, FLOPs, rate, share of ``peak`` and memory of ``fn``. ``flops_fn``
    (default ``fn``) is what the FLOPs are counted on: FlopCounterMode's module tracking needs
    autograd on, so a ``no_grad`` forward is counted through its grad-enabled twin."""
    record.flops = count_flops(flops_fn or fn)
    median, iqr = time_callable(fn, record.device, min_time)
    record.median_ms, record.iqr_ms = median * 1e3, iqr * 1e3
    record.gflops_per_s = record.flops / median / 1e9
    record.pct_of_peak = 100 * record.flops / median / peak if peak else math.nan
    record.samples_per_s = record.batch_size / median
    if measure_memory:
        record.peak_memory_bytes = peak_memory(fn, record.device)
    return record


def build_encoder(name: str) -> nn.Module:
    """An encoder at its constructor's own (realistic) defaults, plus the example value of any
    argument the constructor requires (``feature_mlp``'s ``in_dim``), overridden by the entry's
    ``reference_kwargs`` (a foundation encoder's real-size architecture, with random weights)."""
    entry = ENCODERS.get(name)
    required = {k: entry.example_kwargs[k] for k in required_kwargs(entry.fn) if k in entry.example_kwargs}
    return entry.build(**{**required, **entry.reference_kwargs})


def build_fusion(name: str, in_dims: dict[str, int] | None = None, out_dim: int = 256) -> nn.Module:
    """A fusion block at the reference dims (the entry's ``reference_kwargs``, or ``in_dims``) with its
    constructor's defaults, fitted to the modalities it takes (:meth:`Entry.fit`)."""
    entry = FUSIONS.get(name)
    reference = {"in_dims": REFERENCE_DIMS, "out_dim": out_dim, **entry.reference_kwargs}
    if in_dims is not None:
        reference["in_dims"] = in_dims
    return entry.build(**{**reference, **entry.fit(reference["in_dims"])})


def fusion_inputs(block, batch_size: int, device: str, missing_rate: float = 0.0, tokens: int = REFERENCE_TOKENS):
    """Reference inputs for a block: ``(features, present)``, features requiring grad."""
    g = torch.Generator().manual_seed(0)
    if block.input_kind == "tokens":
        feats = {m: torch.randn(batch_size, tokens, d, generator=g) for m, d in block.in_dims.items()}
    else:
        feats = example_features(block.in_dims, batch_size, "pooled", generator=g)
    present = None
    if missing_rate > 0:
        present = {m: torch.rand(batch_size, generator=g) >= missing_rate for m in block.modalities}
    elif missing_rate < 0:  # every subset pattern
        present = example_present(block.modalities, batch_size)
    feats = {m: x.to(device).requires_grad_() for m, x in feats.items()}
    present = None if present is None else {m: p.to(device) for m, p in present.items()}
    return feats, present


def write_results(out: Path, name: str, records: Sequence[Measurement], info: dict[str, Any], markdown: str) -> list[Path]:
    """``<name>.json`` (machine info + one record per measurement), ``<name>.csv`` and ``<name>.md``."""
    rows = [asdict(r) for r in records]
    paths = [out / f"{name}.json", out / f"{name}.csv", out / f"{name}.md"]
    write_text_atomic(paths[0], json.dumps({"info": info, "records": rows}, indent=2, default=str))
    buf = io.StringIO()
    flat = [{**{k: v for k, v in r.items() if k != "variant"}, "variant": json.dumps(r["variant"], sort_keys=True)} for r in rows]
    if flat:
        writer = csv.DictWriter(buf, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    write_text_atomic(paths[1], buf.getvalue())
    write_text_atomic(paths[2], markdown)
    return paths


def script_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line a benchmark script ran as, for its result files: ``python benchmarks/<script> ARGS``."""
    return f"python benchmarks/{script} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip()


def write_report(out: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    """A benchmark script's results: ``<out>/<name>.json`` (the payload) and ``<name>.md``, each
    written atomically; the markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{name}.json", json.dumps(payload, indent=1))
    write_text_atomic(out / f"{name}.md", markdown)
    print(markdown)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
