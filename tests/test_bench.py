"""The benchmark harness: schema, FLOP counting, GPU path skipped without CUDA."""

import csv
import json

import pytest
import torch

import fusionzoo as fz

from fusionzoo.bench import SuiteOptions, count_flops, run_suite, time_callable
from fusionzoo.cli import main


def test_flops_match_a_hand_count_for_linear():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 2 * 8 * 32 * 16
    # backward: grad wrt input and wrt weight, each another 2 * b * in * out
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 32 * 16


@pytest.mark.parametrize("groups", [1, 8])
def test_conv_backward_costs_twice_its_forward_even_when_grouped(groups):
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = 2 * 2 * 16 * 8 * 8 * (16 // groups) * 9
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_time_callable_is_positive():
    median, iqr = time_callable(lambda: torch.randn(64, 64) @ torch.randn(64, 64), "cpu", min_time=0.01)
    assert median > 0 and iqr >= 0


def test_suite_on_two_tiny_targets_writes_the_schema(tmp_path):
    opts = SuiteOptions(fusions="concat_mlp", encoders="text_embedding", batch_sizes=[4], modality_sweep=[2], missing_sweep=[0.5], min_time=0.01)
    records = run_suite(opts, tmp_path, "t", "test")
    data = json.loads((tmp_path / "t.json").read_text())
    assert {"cpu", "cores", "threads", "torch", "matmul_peak_gflops", "command"} <= set(data["info"])
    kinds = {(r["kind"], r["target"], r["mode"]) for r in data["records"]}
    assert ("fusion", "concat_mlp", "forward_backward") in kinds and ("encoder", "text_embedding", "forward") in kinds
    for r in data["records"]:
        if r["kind"] != "matmul":
            assert r["median_ms"] > 0 and r["flops"] > 0 and r["params"] > 0
            assert set(r) >= {"iqr_ms", "gflops_per_s", "pct_of_peak", "samples_per_s", "peak_memory_bytes", "variant", "dtype"}
    assert any(r["variant"].get("num_modalities") == 2 for r in data["records"])
    assert any(r["variant"].get("missing_rate") == 0.5 for r in data["records"])
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == len(records)
    assert "| fusion | concat_mlp | forward_backward |" in (tmp_path / "t.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path taken without CUDA")
def test_gpu_path_is_skipped_cleanly_without_cuda(tmp_path, capsys):
    assert main(["bench", "--fusions", "concat_mlp", "--device", "cuda", "--out", str(tmp_path)]) == 0
    assert "GPU benchmarks skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run_suite(SuiteOptions(fusions="concat_mlp", device="cuda"), tmp_path, "t", "test")


def test_bench_needs_a_target(capsys):
    assert main(["bench"]) == 2
    assert "choose what to time" in capsys.readouterr().err


def test_bench_selects_encoders_by_patterns_and_excludes():
    from fusionzoo.bench.suite import _selected

    assert _selected(fz.ENCODERS, "hf_*,timm", ["hf_audio"]) == ["hf_text", "hf_vision", "timm"]
    assert _selected(fz.ENCODERS, None, []) == []
