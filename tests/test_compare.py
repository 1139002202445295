"""Seeds, confidence intervals, grids and leaderboards (``fusionzoo compare``)."""

import json
import math

import pytest
import yaml

from fusionzoo.cli import main
from fusionzoo.compare import aggregate, build_leaderboard, expand_grid, mean_ci, parse_seeds, t_quantile
from fusionzoo.compare.grid import fusion_section
from fusionzoo.compare.leaderboard import collect_runs, format_markdown
from fusionzoo.config import ConfigError, load_config
from fusionzoo.training.robustness import relative_robustness

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "n": 48, "val_n": 32, "test_n": 32, "num_classes": 8},
    "model": {
        "encoders": {
            "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
            "audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 128, "hop_length": 64, "n_mels": 16, "channels": [4], "out_dim": 8},
            "text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8},
        },
        "fusion": {"name": "concat_mlp", "out_dim": 16, "hidden_dims": [16]},
        "head": {"name": "linear", "out_dim": 8},
    },
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.01},
}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


# ---------------------------------------------------------------- statistics


def test_t_quantiles_match_the_table():
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=1e-3)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)


def test_mean_ci_by_hand():
    # mean 0.85; squared deviations 0.0025 + 0 + 0.0025 over n - 1 = 2 -> std 0.05;
    # t(0.975, 2) = 4.302653 -> half-width 4.302653 * 0.05 / sqrt(3) = 0.124207
    s = mean_ci([0.8, 0.85, 0.9])
    assert s["mean"] == pytest.approx(0.85) and s["std"] == pytest.approx(0.05) and s["n"] == 3
    assert s["half_width"] == pytest.approx(0.124207, abs=1e-6)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.85 - 0.124207, 0.85 + 0.124207), abs=1e-6)
    one = mean_ci([0.7])
    assert one["mean"] == 0.7 and one["std"] is None and one["ci_low"] is None
    with pytest.raises(ValueError):
        mean_ci([])


def test_relative_robustness_is_the_normalised_area():
    # trapezoids: 0.5 * (1 + 0.8) / 2 + 0.5 * (0.8 + 0.6) / 2 + 1 * (0.6 + 0.2) / 2 = 1.2, over a range of 2
    assert relative_robustness([0, 0.5, 1, 2], [1.0, 0.8, 0.6, 0.2]) == pytest.approx(0.6)
    assert relative_robustness([0, 1], [0.9, 0.9]) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        relative_robustness([1, 0], [0.5, 0.5])


def _run(seed, acc, drop):
    return {"seed": seed, "run_dir": f"r{seed}", "levels": [0, 1], "curves": {"audio": [acc, acc + drop]},
            "numbers": {"test/accuracy": acc, "robustness/drop": drop}}


def test_aggregate_and_effective_robustness():
    runs = [_run(0, 0.8, -0.1), _run(1, 0.9, -0.2)]
    stats = aggregate(runs, reference_drop=-0.3)
    assert stats["test/accuracy"]["mean"] == pytest.approx(0.85)
    assert stats["test/accuracy"]["half_width"] == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)
    assert stats["robustness/effective"]["mean"] == pytest.approx(0.15)  # loses 0.15 less than the reference
    board = build_leaderboard(
        {"fusion=gmu": runs, "fusion=weighted_late": [_run(0, 0.5, -0.3), _run(1, 0.52, -0.3)]},
        {"fusion=gmu": {"fusion": "gmu"}, "fusion=weighted_late": {"fusion": "weighted_late"}, "fusion=x": {"status": "skipped", "reason": "why"}},
    )
    assert board["reference"] == "fusion=weighted_late" and [r["cell"] for r in board["cells"]] == ["fusion=gmu", "fusion=weighted_late"]
    # two seeds: t(0.975, 1) = 12.7 makes the intervals wide enough to overlap
    assert board["overlap"] == {"best": "fusion=gmu", "overlapping": ["fusion=weighted_late"]}
    tight = build_leaderboard({"a": [_run(s, 0.9 + s / 1000, 0) for s in range(3)], "b": [_run(s, 0.5 + s / 1000, 0) for s in range(3)]})
    assert tight["overlap"] == {"best": "a", "overlapping": []} and tight["reference"] is None
    assert board["problems"] == {"fusion=x": {"status": "skipped", "reason": "why"}}
    assert board["cells"][0]["mean_curves"]["audio"] == pytest.approx([0.85, 0.7])


# ---------------------------------------------------------------- grids


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5] and parse_seeds(7) == [7]
    for bad in ("0,0", "a", ""):
        with pytest.raises(ConfigError, match="seeds"):
            parse_seeds(bad)


def test_fusion_section_keeps_what_the_block_takes():
    base = {"name": "concat_mlp", "out_dim": 64, "hidden_dims": [64]}
    section, notes = fusion_section(base, "film", ["audio", "visual"])
    assert section == {"name": "film", "out_dim": 64, "target": "visual"}
    assert any("hidden_dims dropped" in n for n in notes)
    assert fusion_section(base, "deepset", ["audio", "visual"])[0] == {"name": "deepset", "out_dim": 64, "hidden_dims": [64]}


def test_expand_grid_crosses_axes_and_skips_what_cannot_build(tiny):
    cells = expand_grid(tiny, "gmu,bilinear", ["train.modality_dropout=0,0.3"])
    assert [c.name for c in cells] == [
        "fusion=bilinear,modality_dropout=0", "fusion=bilinear,modality_dropout=0.3",
        "fusion=gmu,modality_dropout=0", "fusion=gmu,modality_dropout=0.3",
    ]
    assert all("fuses exactly 2 modalities" in c.skipped for c in cells[:2]) and cells[2].skipped is None
    assert "train.modality_dropout=0.3" in cells[3].overrides
    with pytest.raises(ConfigError, match="matches no fusion block"):
        expand_grid(tiny, "nope*")
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        expand_grid(tiny, None, ["train.lr"])


def test_a_seed_list_is_several_runs(tiny):
    cfg = load_config(tiny, ["seed=[0, 1]"])
    assert cfg.seeds == [0, 1]
    with pytest.raises(ConfigError, match="one run per seed"):
        cfg.seed
    with pytest.raises(ConfigError, match="seed: expected an int or a list of distinct ints"):
        load_config(tiny, ["seed=[1, 1]"])


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_compare_runs_the_grid_writes_the_leaderboard_and_skips_finished_cells(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(tiny), "--fusions", "concat_mlp,attention,bilinear", "--seeds", "0,1", "--jobs", "2", "--out", str(out)]
    assert main(args) == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "grid.json"):
        assert (out / name).is_file(), name
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["cell"] for r in board["cells"]) == ["fusion=attention", "fusion=concat_mlp"]
    assert all(r["seeds"] == [0, 1] for r in board["cells"])
    assert board["problems"]["fusion=bilinear"]["status"] == "skipped"
    row = board["cells"][0]["metrics"]
    assert row["test/accuracy"]["n"] == 2 and {"subset/audio+visual/accuracy", "robustness/mean", "params", "flops_per_sample"} <= set(row)
    shares = [v["mean"] for k, v in row.items() if k.startswith("share/")]
    assert len(shares) >= 2 and abs(sum(shares) - 1) < 1e-6  # fusionzoo explain's shares of each modality, per cell
    metrics = json.loads((out / "cells" / "fusion=attention" / "seed-1" / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["select"] == "best"
    md = (out / "leaderboard.md").read_text()
    assert "fusion=concat_mlp" in md and "bilinear` skipped" in md and "95% t-interval" in md and "contribution shares (%)" in md
    stamp = (out / "cells" / "fusion=concat_mlp" / "seed-0" / "metrics.json").stat().st_mtime_ns
    (out / "cells" / "fusion=attention" / "seed-1" / "eval" / "results.json").unlink()  # as if interrupted there
    capsys.readouterr()
    assert main(args) == 0  # the finished runs are not trained again, the unfinished one is resumed
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 3 and "fusion=attention seed 1: done" in printed
    assert "resuming" in (out / "cells" / "fusion=attention" / "seed-1.log").read_text()
    assert (out / "cells" / "fusion=concat_mlp" / "seed-0" / "metrics.json").stat().st_mtime_ns == stamp
    # the leaderboard step alone, on the collected run folders
    (out / "grid.json").unlink()
    assert main(["compare", "--collect", str(out), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "leaderboard.json").read_text())
    assert [r["cell"] for r in again["cells"]] == [r["cell"] for r in board["cells"]]
    assert again["cells"][0]["metrics"]["test/accuracy"] == board["cells"][0]["metrics"]["test/accuracy"]


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tiny, tmp_path):
    out = tmp_path / "cmp"
    # noise 5 passes the model build but the dataset refuses it inside the cell's process
    assert main(["compare", str(tiny), "--set-grid", "data.noise=0.5,5", "--seeds", "0", "--out", str(out)]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["cell"] for r in board["cells"]] == ["noise=0.5"]
    failed = board["problems"]["noise=5"]
    assert failed["status"] == "failed" and "noise must be in [0, 1]" in failed["reason"]


def test_train_seeds_aggregates_every_number(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--seeds", "0,1", "--run-dir", str(run)]) == 0
    assert "95% CI over 2 seeds" in capsys.readouterr().out
    result = json.loads((run / "aggregate.json").read_text())
    accs = [json.loads((run / f"seed-{s}" / "metrics.json").read_text())["test"]["accuracy"] for s in (0, 1)]
    stats = result["aggregate"]
    assert stats["test/accuracy"]["mean"] == pytest.approx(sum(accs) / 2) and stats["test/accuracy"]["n"] == 2
    assert {"subset/visual/accuracy", "subset/audio+text+visual/accuracy", "robustness/text"} <= set(stats)
    assert (run / "aggregate.md").read_text().startswith("# tiny: 2 seeds (0, 1)")


def test_evaluate_run_counts_flops_for_a_block_with_learned_latents(tiny, tmp_path):
    # bottleneck feeds a parameter (its latents) straight into attention: FLOP counting must not need no_grad
    from fusionzoo.training import evaluate_run, train

    train(tiny, run_dir=tmp_path / "run", overrides=["model.fusion={name: bottleneck, out_dim: 16}"], log=False)
    result = evaluate_run(tmp_path / "run", levels=(0.0, 1.0))
    assert result["flops_per_sample"] > 0 and result["params"] > 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert metrics["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in log))


def test_two_compares_cannot_share_an_output_folder(tiny, tmp_path, capsys):
    from fusionzoo.training.runfolder import claim

    out = tmp_path / "cmp"
    with claim(out, marker=False):  # as if another compare were running there
        assert main(["compare", str(tiny), "--fusions", "gmu", "--seeds", "0", "--out", str(out)]) == 2
    assert f"{out} is in use by another fusionzoo process (PID " in capsys.readouterr().err
    assert not (out / "cells").exists()


def test_a_regression_leaderboard_ranks_by_mae_lower_first(tmp_path):
    for cell, maes in {"good": [0.20, 0.22, 0.21], "bad": [0.50, 0.52, 0.49]}.items():
        for seed, mae in enumerate(maes):
            run = tmp_path / cell / f"seed-{seed}"
            run.mkdir(parents=True)
            test = {"mae": mae, "rmse": mae * 1.3, "pearson_r": 0.9 - mae, "loss": mae**2, "n": 50}
            (run / "metrics.json").write_text(json.dumps({"seed": seed, "test": test, "train_seconds": 1.0}))
    board = build_leaderboard(collect_runs(tmp_path))
    assert board["metric"] == "mae" and [r["cell"] for r in board["cells"]] == ["good", "bad"]
    assert board["overlap"] == {"best": "good", "overlapping": []}
    text = format_markdown(board)
    assert "test mae" in text and "0.210 ±" in text and "MAE (lower is better)" in text
