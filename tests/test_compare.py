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


# ---------------------------------------------------------------- paired statistics


def test_paired_comparison_by_hand_and_against_scipy():
    from scipy import stats

    from fusionzoo.compare.stats import paired_comparison

    a, b = {0: 0.80, 1: 0.85, 2: 0.90, 3: 0.70}, {0: 0.70, 1: 0.80, 2: 0.85, 3: 0.72, 9: 0.1}  # seed 9: not a pair
    # differences 0.10, 0.05, 0.05, -0.02: mean 0.045, sample variance 0.0024333.../(n=4) -> se 0.024664
    got = paired_comparison(a, b)
    assert got["n"] == 4 and got["mean"] == pytest.approx(0.045, abs=1e-12)
    se = math.sqrt(((0.055**2 + 0.005**2 + 0.005**2 + 0.065**2) / 3) / 4)
    assert got["ci_high"] - got["mean"] == pytest.approx(stats.t.ppf(0.975, 3) * se, abs=1e-9)
    assert got["p_t"] == pytest.approx(stats.ttest_rel([0.80, 0.85, 0.90, 0.70], [0.70, 0.80, 0.85, 0.72]).pvalue, abs=1e-9)
    assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon([0.10, 0.05, 0.05, -0.02]).pvalue, abs=1e-9)
    # Nadeau-Bengio: the variance of the mean grows from s^2/n to s^2 (1/n + n_test/n_train)
    corrected = paired_comparison(a, b, test_train_ratio=0.25)
    assert corrected["ci_high"] - corrected["mean"] == pytest.approx(stats.t.ppf(0.975, 3) * se * math.sqrt(1 + 4 * 0.25), abs=1e-9)
    assert corrected["p_t"] > got["p_t"]
    assert paired_comparison({0: 1.0}, {0: 0.5})["p_t"] is None  # one pair says nothing about spread
    same = paired_comparison({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same["p_t"] == 1.0 and same["p_wilcoxon"] is None


def test_holm_by_hand():
    from fusionzoo.compare.stats import holm

    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> made monotone: 0.03, 0.06, 0.06
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": None})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_friedman_ranks_and_the_nemenyi_critical_difference():
    from scipy import stats

    from fusionzoo.compare.stats import friedman

    scores = {"a": {0: 0.9, 1: 0.8, 2: 0.85, 3: 0.9}, "b": {0: 0.7, 1: 0.75, 2: 0.7, 3: 0.9}, "c": {0: 0.6, 1: 0.5, 2: 0.55, 3: 0.4}}
    got = friedman(scores)
    assert got["ranks"] == pytest.approx({"a": 1.125, "b": 1.875, "c": 3.0})  # seed 3: a and b tie at 1.5
    assert got["p"] == pytest.approx(stats.friedmanchisquare([0.9, 0.8, 0.85, 0.9], [0.7, 0.75, 0.7, 0.9], [0.6, 0.5, 0.55, 0.4]).pvalue, abs=1e-9)
    assert got["cd"] == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=1e-3)  # Demšar's q_0.05 for k = 3
    four = friedman({m: {s: float(i + s) for s in range(14)} for i, m in enumerate("abcd")})
    assert four["cd"] == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 14)), abs=1e-3)  # q_0.05 for k = 4
    assert four["ranks"] == {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}  # higher is better
    assert friedman({"a": {0: 1.0}, "b": {0: 2.0}}) is None


def test_the_leaderboard_ranks_with_paired_tests_holm_and_a_cd_diagram(tmp_path):
    """Seeds pair the cells: ``close`` trails ``best`` by a consistent 1 point (separated by the paired
    test though the marginal intervals overlap); ``noisy`` is not separated."""
    values = {"best": [0.80, 0.90, 0.70, 0.85, 0.75], "close": [0.79, 0.89, 0.69, 0.84, 0.74], "noisy": [0.60, 0.95, 0.65, 0.88, 0.70]}
    for cell, accuracies in values.items():
        for seed, acc in enumerate(accuracies):
            run = tmp_path / "cells" / cell / f"seed-{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"seed": seed, "test": {"accuracy": acc, "n": 100}, "train_seconds": 1.0}))
    board = build_leaderboard(collect_runs(tmp_path / "cells"))
    rows = {r["cell"]: r for r in board["cells"]}
    assert "paired" not in rows["best"] and rows["close"]["paired"]["mean"] == pytest.approx(-0.01)
    assert rows["close"]["paired"]["p_holm"] < 0.05 <= rows["noisy"]["paired"]["p_holm"]
    assert "close" in board["overlap"]["overlapping"]  # the marginal intervals cannot tell them apart
    assert board["friedman"]["ranks"]["best"] < board["friedman"]["ranks"]["close"]
    text = format_markdown(board)
    assert "Δ vs best (paired)" in text and "| -1.0 ± 0.0 |" in text
    assert "Distinguishable from `best` at 0.05: `close`. Not distinguishable: `noisy`." in text and "Nemenyi critical difference" in text
    from fusionzoo.compare import write_leaderboard

    written = write_leaderboard(board, tmp_path / "out")
    assert (tmp_path / "out" / "cd.png") in written and (tmp_path / "out" / "cd.png").stat().st_size > 0


def test_the_notes_name_the_pairs_the_nemenyi_test_separates(tmp_path):
    for cell, base in {"a": 0.9, "b": 0.85, "c": 0.8}.items():
        for seed in range(6):
            run = tmp_path / "cells" / cell / f"seed-{seed}"
            run.mkdir(parents=True)
            acc = base + 0.01 * seed  # the same order on every seed
            (run / "metrics.json").write_text(json.dumps({"seed": seed, "test": {"accuracy": acc, "n": 100}, "train_seconds": 1.0}))
    board = build_leaderboard(collect_runs(tmp_path / "cells"))
    assert board["friedman"]["p"] < 0.01 and board["friedman"]["cd"] == pytest.approx(2.343 * math.sqrt(12 / 36), abs=1e-3)
    assert "by the Nemenyi test, ranks further apart than the critical difference: `a` and `c` (2.00)." in format_markdown(board)


def test_the_pooled_bootstrap_resamples_the_test_samples_of_every_fold(tmp_path):
    """Two cells over 3 folds of 100 test samples: ``a`` right on 90% of them, ``b`` on the same
    samples but 10 fewer (paired: its difference interval is below 0); the pooled accuracy is
    the mean over all 300 samples, its interval the bootstrap percentiles."""
    import torch
    from safetensors.torch import save_file

    rng = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 100), generator=rng)
    right = torch.rand(3, 100, generator=rng) < 0.9
    for cell, wrong_extra in (("a", 0), ("b", 10)):
        for fold in range(3):
            run = tmp_path / "cells" / cell / f"fold-{fold}" / "seed-0"
            run.mkdir(parents=True)
            hit = right[fold].clone()
            hit[torch.nonzero(hit)[:wrong_extra, 0]] = False
            pred = torch.where(hit, labels[fold], (labels[fold] + 1) % 4)
            save_file({"outputs": torch.nn.functional.one_hot(pred, 4).float(), "labels": labels[fold]}, str(run / "test_predictions.safetensors"))
            acc = float(hit.float().mean())
            (run / "metrics.json").write_text(json.dumps({"seed": 0, "test": {"accuracy": acc, "n": 100}, "train_seconds": 1.0}))
            (run / "config.yaml").write_text(yaml.safe_dump({"data": {"folds": {"k": 3, "fold": fold}}}))
    board = build_leaderboard(collect_runs(tmp_path / "cells"))
    a, b = board["cells"]
    assert a["cell"] == "a" and a["bootstrap"]["n"] == 300
    assert a["bootstrap"]["mean"] == pytest.approx(float(right.float().mean()))
    assert a["bootstrap"]["ci_low"] < a["bootstrap"]["mean"] < a["bootstrap"]["ci_high"]
    half = 1.96 * math.sqrt(a["bootstrap"]["mean"] * (1 - a["bootstrap"]["mean"]) / 300)  # the normal approximation
    assert a["bootstrap"]["ci_high"] - a["bootstrap"]["ci_low"] == pytest.approx(2 * half, rel=0.2)
    assert b["bootstrap"]["vs_best"]["mean"] == pytest.approx(-0.1) and b["bootstrap"]["vs_best"]["ci_high"] < 0
    text = format_markdown(board)
    assert "pooled test acc. (%, bootstrap 95%)" in text and "excludes 0 for: `b`" in text
