import subprocess
import sys
from pathlib import Path

import fusionzoo as fz
from fusionzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("encoders", "fusions", "heads", "models", "datasets", "losses"):
        assert f"{kind} (" in out
    for name in fz.list_fusions() + fz.list_encoders() + fz.list_heads():
        assert name in out
    assert "params" in out and "paper" in out


def test_list_one_kind_with_pattern(capsys):
    assert main(["list", "fusions", "--pattern", "concat*"]) == 0
    out = capsys.readouterr().out
    assert "concat_mlp" in out and "heads (" not in out
    assert f"fusions ({len(fz.list_fusions('concat*'))})" in out


def test_info_entry(capsys):
    assert main(["info", "concat_mlp"]) == 0
    out = capsys.readouterr().out
    assert "[fusions] concat_mlp" in out and "num_params" in out and "input_kind: pooled" in out


def test_info_unknown_suggests(capsys):
    assert main(["info", "concat_mpl"]) == 2
    assert "did you mean concat_mlp" in capsys.readouterr().err


def test_info_config_runs_a_forward_pass(capsys):
    assert main(["info", str(ROOT / "configs/experiments/quickstart.yaml"), "--set", "model.head.out_dim=7"]) == 0
    out = capsys.readouterr().out
    assert "-> output (4, 7)" in out and "finite: True" in out


def test_info_config_error_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {encoders: {}, fusion: {name: concat_mlp}, head: {name: linear}}\n")
    assert main(["info", str(bad)]) == 2
    assert "model.encoders" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "fusionzoo", "list", "heads"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert "linear" in out and "mlp" in out


def test_info_on_an_alignment_config(capsys):
    assert main(["info", str(ROOT / "configs/experiments/align_avdigits.yaml"), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "alignment of audio and visual" in out and "'audio': (2, 64)" in out and "encoders.visual" in out
