import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fusion_reference  # noqa: E402


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
