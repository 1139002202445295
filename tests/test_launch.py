"""Launchers: the same grid on local processes, a local Ray cluster and submitit's local executor
gives the same leaderboard; compare --tune tunes each cell before its runs; tune's workers."""

import json

import pytest
import yaml

from fusionzoo.cli import main
from fusionzoo.compare.leaderboard import collect_runs
from fusionzoo.errors import ConfigError
from fusionzoo.launch import Launcher
from tests.test_compare import TINY


def _functions():
    """Defined in a function, so Ray and submitit pickle them by value (their workers cannot import tests/)."""

    def double(x):
        return 2 * x

    def fail_on_two(x):
        if x == 2:
            raise RuntimeError("node lost")
        return x

    return double, fail_on_two


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _numbers(out):
    board = json.loads((out / "leaderboard.json").read_text())
    return {r["cell"]: (r["metrics"]["test/accuracy"]["mean"], r["metrics"]["test/loss"]["mean"]) for r in board["cells"]}


def test_a_launcher_maps_and_reports_a_lost_task():
    _, _fail_on_two = _functions()
    results = dict(Launcher("local", jobs=2).map(_fail_on_two, [(1,), (2,), (3,)], on_error=lambda item, e: f"lost {item[0]}: {e}"))
    assert results == {0: 1, 1: "lost 2: node lost", 2: 3}
    with pytest.raises(ConfigError, match="--launcher: one of local, ray, slurm"):
        Launcher("kubernetes")
    with pytest.raises(ConfigError, match="--jobs"):
        Launcher("local", jobs=0)


@pytest.mark.slow
def test_ray_and_slurm_give_the_local_leaderboard(grid, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("submitit")
    common = ["compare", str(grid), "--fusions", "concat_mlp,gmu", "--seeds", "0", "--jobs", "2", "--cpus-per-task", "1"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--launcher", "ray"]) == 0
    assert main([*common, "--out", str(tmp_path / "slurm"), "--launcher", "slurm", "--slurm-cluster", "local"]) == 0
    local = _numbers(tmp_path / "local")
    assert len(local) == 2
    assert _numbers(tmp_path / "ray") == local
    assert _numbers(tmp_path / "slurm") == local
    assert any((tmp_path / "slurm" / "slurm").rglob("*_log.out"))  # submitit's job files


def test_launchers_run_items_on_ray_and_submitit(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("submitit")
    _double, _fail_on_two = _functions()
    items = [(1,), (2,), (3,)]
    assert dict(Launcher("ray", jobs=2, cpus=1).map(_double, items, on_error=None)) == {0: 2, 1: 4, 2: 6}
    slurm = Launcher("slurm", jobs=2, cpus=1, folder=tmp_path / "jobs", cluster="local")
    assert dict(slurm.map(_double, items, on_error=None)) == {0: 2, 1: 4, 2: 6}
    lost = dict(slurm.map(_fail_on_two, items, on_error=lambda item, e: "lost"))
    assert lost == {0: 1, 1: "lost", 2: 3}


@pytest.mark.slow
def test_compare_tune_tunes_each_cell_with_the_same_budget(grid, tmp_path, capsys):
    pytest.importorskip("optuna")
    config = dict(TINY) | {"tune": {"space": {"train.lr": {"log_uniform": [1.0e-3, 3.0e-2]}}, "trials": 3}}
    grid.write_text(yaml.safe_dump(config))
    out = tmp_path / "cmp"
    args = ["compare", str(grid), "--fusions", "concat_mlp,gmu", "--seeds", "0", "--tune", "--tune-trials", "3", "--out", str(out)]
    assert main(args) == 0
    for cell in ("fusion=concat_mlp", "fusion=gmu"):
        summary = json.loads((out / "tune" / cell / "tune.json").read_text())
        assert summary["budget"] == 3 and summary["finished"]
        lr = yaml.safe_load((out / "tune" / cell / "best_config.yaml").read_text())["train"]["lr"]
        assert yaml.safe_load((out / "cells" / cell / "seed-0" / "config.yaml").read_text())["train"]["lr"] == lr  # the cell's runs use it
    assert sorted(collect_runs(out)) == ["fusion=concat_mlp", "fusion=gmu"]  # the tuning trials are not among the runs
    md = (out / "leaderboard.md").read_text()
    assert "Tuned: each of 2 cells by its own Optuna study of 3 trials" in md and "train.lr log_uniform" in md
    capsys.readouterr()
    assert main(["compare", str(grid), "--fusions", "gmu", "--set-grid", "train.lr=0.01,0.02", "--seeds", "0", "--tune",
                 "--out", str(tmp_path / "clash")]) == 2
    assert "which tune.space also searches" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_jobs_run_workers_on_one_study(tmp_path):
    pytest.importorskip("optuna")
    config = dict(TINY) | {"tune": {"space": {"train.lr": {"log_uniform": [1.0e-3, 3.0e-2]}}}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "study"
    assert main(["tune", str(path), "--trials", "4", "--jobs", "2", "--cpus-per-task", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "tune.json").read_text())
    assert summary["finished"] and summary["trials"]["complete"] + summary["trials"]["pruned"] == 4
    logs = sorted(p.name for p in (out / "workers").iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]
    ran = [line for p in (out / "workers").iterdir() for line in p.read_text().splitlines() if line.startswith("trial ")]
    assert len(ran) == 4
