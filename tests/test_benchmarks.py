import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fusion_reference  # noqa: E402
import gpu_check  # noqa: E402
import latency  # noqa: E402
import peers  # noqa: E402
import train_speed  # noqa: E402


def test_fusion_reference_script_writes_results(tmp_path):
    rc = fusion_reference.main(
        ["--fusions", "concat_mlp", "--batch-size", "8", "--min-time", "0.01", "--out", str(tmp_path)]
    )
    assert rc == 0
    data = json.loads((tmp_path / "fusion_reference.json").read_text())
    (record,) = data["records"]
    assert record["name"] == "concat_mlp" and record["batch_size"] == 8
    assert record["fwd_bwd_flops"] > record["fwd_flops"] > 0
    assert record["fwd_bwd_ms"] > 0 and data["info"]["matmul_peak_gflops"] > 0
    assert "| concat_mlp |" in (tmp_path / "fusion_reference.md").read_text()


def test_latency_script_times_eager_and_export(tmp_path):
    rc = latency.main(["--configs", "configs/experiments/quickstart.yaml", "--modes", "eager,export", "--min-time", "0.01", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "latency.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["all present", "audio missing"]
    assert all(r["eager_ms"] > 0 and r["export_max_abs_diff"] < 1e-5 for r in rows)
    assert "| `quickstart` | audio missing |" in (tmp_path / "latency.md").read_text()


def test_train_speed_extracts_a_revision_and_renders(tmp_path):
    code = train_speed.extract("HEAD", tmp_path / "head")
    assert (code / "fusionzoo" / "__init__.py").is_file() and (code / "configs" / "experiments" / "quickstart.yaml").is_file()
    payload = {"baseline": "abc", "command": "python benchmarks/train_speed.py", "machine": {"cpu": "cpu", "torch": "2"},
               "results": [{"config": "configs/x.yaml", "median_samples_per_s": {"baseline": 100.0, "current": 160.0}, "speedup": 1.6,
                            "max_abs_weight_difference": 0.0, "test_accuracy": {"baseline": [70.0, 72.0], "current": [71.0, 73.0]},
                            "test_accuracy_ci": {"baseline": (71.0, 12.7), "current": (72.0, 12.7)}}]}
    text = train_speed.render(payload)
    assert "| `x` | 100 | 160 | 1.60x | 0 |" in text and "current: 71.0, 73.0 -> 72.0 ± 12.7%" in text


def test_peers_verdict_reads_the_per_round_ratio_range():
    def row(name, low, high):
        return {"pair": name, "ms": {"ours": 1.0, "ours, masked path": 1.2, "peer": 1.0}, "peer_over_ours": (low + high) / 2,
                "peer_over_ours_iqr": [low, high], "peer_over_ours_masked": 0.8, "peer_over_peer_again_iqr": [0.99, 1.01],
                "pct_of_peak": {"ours": 50.0, "peer": 50.0}}

    payload = {"command": "python benchmarks/peers.py", "machine": {"cpu": "cpu", "threads": 2, "torch": "2"}, "peer": ["tmm"],
               "batch_size": 256, "rounds": 9, "matmul_peak_gflops": 100.0,
               "rows": [row("a", 1.02, 1.05), row("b", 0.97, 1.01), row("c", 0.93, 0.98)]}
    lines = {line.split("|")[1].strip(): line for line in peers.render(payload).splitlines() if line.startswith("| `")}
    assert "| 1.02-1.05 | ours faster |" in lines["`a`"]
    assert "| 0.97-1.01 | tie (within noise) |" in lines["`b`"]
    assert "| 0.93-0.98 | peer faster | 0.99-1.01 |" in lines["`c`"]  # then the A/A range


@pytest.mark.slow
def test_feature_cache_script_compares_cached_and_uncached_runs(tmp_path):
    pytest.importorskip("transformers")
    import feature_cache

    assert feature_cache.main(["--train", "3", "--epochs", "2", "--size", "tiny", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "feature_cache.json").read_text())
    assert set(data["results"]) == {"none", "memory"} and data["max_val_loss_difference"] < 1e-5
    assert "| memory |" in (tmp_path / "feature_cache.md").read_text()


def test_peft_benchmark_measures_one_variant():
    pytest.importorskip("peft")
    import peft_lora

    row = peft_lora.measure("LoRA r=8 (query, value)", steps=1, batch=2, tokens=8)
    assert 0 < row["trainable"] < 0.01 * row["total"] and row["step_s"] > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the dry run without CUDA")
def test_gpu_check_without_cuda_is_one_line_and_exit_0(tmp_path, capsys):
    import subprocess

    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 0
    assert capsys.readouterr().out == "gpu-check: needs CUDA (no GPU is visible here); nothing run\n"
    assert not (tmp_path / "gpu").exists()
    done = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("nothing run")


def test_gpu_check_names_what_the_machine_lacks(monkeypatch):
    real = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None if name in ("optuna", "yaml") else real(name))
    missing = gpu_check.missing_packages()
    assert any(m.startswith("optuna==") for m in missing) and any(m.startswith("pyyaml==") for m in missing)
    steps = [name for name, _, _ in gpu_check.steps(ROOT / "x")]
    assert steps == ["pytest_gpu", "bench_eager", "bench_compiled", "train_speed"]
    assert abs(sum(share for _, _, share in gpu_check.steps(ROOT / "x")) - 0.95) < 1e-9  # a margin of the budget


def test_loop_overhead_times_both_loops_and_writes_the_table(tmp_path):
    import loop_overhead
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "seed": 0, "data": {"name": "synthetic", "n": 64, "val_n": 16, "test_n": 16, "num_classes": 8},
        "model": {"encoders": {"text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8}},
                  "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 8}},
        "train": {"epochs": 1, "batch_size": 16},
    }))
    assert loop_overhead.main(["--configs", str(config), "--rounds", "1", "--epochs", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "loop_overhead.json").read_text())["results"][0]
    assert result["ours"] > 0 and result["plain"] > 0 and result["ratio"] == pytest.approx(result["ours"] / result["plain"])
    md = (tmp_path / "loop_overhead.md").read_text()
    assert "| `tiny` |" in md and "The plain loop, one epoch" in md
