"""fusionzoo tune: an Optuna study whose trials are run folders; the budget shared by workers,
pruning on validation, interrupted and killed trials resumed, the test split read once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fusionzoo as fz
from fusionzoo.cli import main
from tests.common import config_file, subprocess_env, tiny_config

optuna = pytest.importorskip("optuna")

from fusionzoo.tuning import study as study_module  # noqa: E402
from fusionzoo.tuning.study import tune  # noqa: E402

SPACE = {
    "train.lr": {"log_uniform": [1.0e-4, 3.0e-2]},
    "train.modality_dropout": {"uniform": [0.0, 0.5]},
    "model.fusion.hidden_dims": {"choice": [[16], [32, 16]]},
}


def tune_config(epochs=2, trials=4, **tune_section):
    return tiny_config(epochs=epochs) | {"name": "tiny", "tune": {"space": SPACE, "trials": trials, **tune_section}}


def _quiet(*_):
    pass


def _load(out):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")


def test_a_study_runs_its_budget_and_reports_the_best_config(tmp_path):
    out = tmp_path / "study"
    result = tune(tune_config(trials=4), out, say=_quiet)
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 4 and result["finished"]
    best = result["best"]
    trials = _load(out).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert best["val"] == max(t.value for t in complete)
    # the best config is a plain config with the best trial's values, and trains as that trial did
    cfg = fz.load_config(out / "best_config.yaml")
    assert "tune" not in cfg.raw
    chosen = next(t for t in complete if t.value == best["val"])
    assert cfg.train.lr == pytest.approx(chosen.params["train.lr"])
    assert cfg.raw["model"]["fusion"]["hidden_dims"] == json.loads(chosen.params["model.fusion.hidden_dims"])
    # test is read once, on the best trial; no other trial evaluated it
    for t in complete:  # (a pruned trial stops before its summary)
        metrics = json.loads((out / "trials" / f"trial-{t.number:04d}" / "metrics.json").read_text())
        assert (metrics["test"] is not None) == (t.number == best["trial"])
    assert best["test"]["accuracy"] == json.loads((out / "trials" / f"trial-{best['trial']:04d}" / "metrics.json").read_text())["test"]["accuracy"]
    table = (out / "trials.md").read_text()
    assert table.count("| complete |") + table.count("| pruned |") == 4
    assert (out / "trials.csv").read_text().splitlines()[0].startswith("trial,state,val accuracy,epochs,train.lr")
    assert {"history.png"} <= set(result["plots"])


def test_the_same_study_draws_the_same_values(tmp_path):
    first = tune(tune_config(epochs=1, trials=3), tmp_path / "a", say=_quiet)
    second = tune(tune_config(epochs=1, trials=3), tmp_path / "b", say=_quiet)
    params = [[t.params for t in _load(tmp_path / d).trials] for d in ("a", "b")]
    assert params[0] == params[1] and first["best"]["val"] == second["best"]["val"]
    assert len({json.dumps(p, sort_keys=True) for p in params[0]}) == 3


def test_a_failed_trial_is_recorded_with_its_error_and_the_study_goes_on(tmp_path):
    """out_dim -3 passes the config checks and fails when the model is built."""
    config = tune_config(epochs=4, trials=8)
    config["tune"]["space"] = {"train.lr": {"choice": [0.03, 0.02, 1.0e-6]}, "model.fusion.out_dim": {"choice": [16, 12, -3]}}
    result = tune(config, tmp_path / "s", say=_quiet)
    rows = _rows(tmp_path / "s")
    failed = [r for r in rows if r["state"] == "failed"]
    assert failed and all(r["model.fusion.out_dim"] == "-3" for r in failed) and all(r["note"] for r in failed)
    assert result["trials"]["complete"] >= 1 and sum(result["trials"].values()) == 8


def _rows(out):
    import csv

    return list(csv.DictReader((out / "trials.csv").open()))


def test_pruning_stops_trials_that_fall_behind(tmp_path):
    config = tune_config(epochs=4, trials=8)
    config["tune"]["space"] = {"train.lr": {"log_uniform": [1.0e-7, 3.0e-2]}}
    result = tune(config, tmp_path / "s", say=_quiet)
    pruned = [r for r in _rows(tmp_path / "s") if r["state"] == "pruned"]
    assert result["trials"]["pruned"] == len(pruned) >= 1
    assert all(2 <= int(r["epochs"]) < 4 for r in pruned)  # from the second epoch on, before the last


def test_an_interrupted_trial_is_resumed_from_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "s"
    real = study_module.train

    def interrupted(*args, on_epoch, run_dir, **kwargs):
        def hook(record):
            on_epoch(record)
            if run_dir.name == "trial-0001" and record["epoch"] == 1:
                raise KeyboardInterrupt

        return real(*args, on_epoch=hook, run_dir=run_dir, **kwargs)

    monkeypatch.setattr(study_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(tune_config(epochs=3, trials=3), out, say=_quiet)
    monkeypatch.setattr(study_module, "train", real)
    log = out / "trials" / "trial-0001" / "log.jsonl"
    assert len(log.read_text().splitlines()) == 1
    result = tune(tune_config(epochs=3, trials=3), out, say=_quiet)
    assert result["finished"] and sum(result["trials"].values()) == 3
    rows = _rows(out)
    assert [r["trial"] for r in rows] == ["0", "1", "3"]  # trial 2 is the retry of 1, in 1's folder
    assert "resumed" in rows[1]["note"] and rows[1]["state"] in ("complete", "pruned")
    assert len(log.read_text().splitlines()) in (2, 3)  # epoch 1 was not trained again
    first = json.loads(log.read_text().splitlines()[0])
    assert first["epoch"] == 1


def test_bad_spaces_name_the_key(tmp_path):
    def bad(space, match):
        config = tune_config() | {"tune": {"space": space}}
        with pytest.raises(fz.ConfigError, match=match):
            tune(config, tmp_path / "s", say=_quiet)

    bad({"train.lrr": {"uniform": [0.1, 0.2]}}, r"tune.space.train.lrr: 0.1 does not make a valid config: .*train.lrr: unknown key; did you mean lr")
    bad({"train.lr": {"log_uniform": [0, 0.1]}}, r"tune.space.train.lr.log_uniform: a log scale needs low > 0")
    bad({"train.lr": {"normal": [0, 1]}}, r"tune.space.train.lr: expected one of \{uniform")
    bad({"train.epochs": {"int": [0, 3]}}, r"tune.space.train.epochs: 0 does not make a valid config")
    bad({"train.lr": {"choice": [0.1]}}, r"choice: expected a list of at least two values")
    with pytest.raises(fz.ConfigError, match="tune: required for fusionzoo tune"):
        tune(tiny_config(), tmp_path / "s", say=_quiet)
    with pytest.raises(fz.ConfigError, match=r"tune.budget: unknown key"):
        fz.load_config(tune_config() | {"tune": {"space": SPACE, "budget": 3}})


def test_a_study_of_another_config_is_refused(tmp_path):
    tune(tune_config(epochs=1, trials=1), tmp_path / "s", say=_quiet)
    with pytest.raises(fz.ConfigError, match="was made from another config, space or metric"):
        tune(tune_config(epochs=2, trials=1), tmp_path / "s", say=_quiet)


@pytest.mark.slow
def test_two_workers_share_one_budget_without_duplicates(tmp_path):
    path = config_file(tmp_path, tune_config(epochs=2, trials=6))
    env = {**subprocess_env(), study_module.HEARTBEAT_ENV: "1"}
    command = [sys.executable, "-m", "fusionzoo", "tune", str(path), "--out", str(tmp_path / "s")]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = _load(tmp_path / "s").trials
    counted = [t for t in trials if not t.user_attrs.get("over_budget")]
    assert len(counted) == 6 and all(t.state.name in ("COMPLETE", "PRUNED") for t in counted)
    assert len({json.dumps(t.params, sort_keys=True) for t in counted}) == 6
    ran = [line.split(":")[0] for out in outputs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(ran) == [f"trial {n}" for n in range(6)]  # each trial run by one worker
    assert all("best: trial" in out for out in outputs)


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_retried_and_resumed(tmp_path, monkeypatch):
    path = config_file(tmp_path, tune_config(epochs=30, trials=1) | {"data": {"name": "synthetic", "n": 400, "val_n": 32, "test_n": 32, "num_classes": 8}})
    env = {**subprocess_env(), study_module.HEARTBEAT_ENV: "1"}
    out = tmp_path / "s"
    worker = subprocess.Popen([sys.executable, "-m", "fusionzoo", "tune", str(path), "--out", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "trials" / "trial-0000" / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    done_before = len(log.read_text().splitlines())
    assert 2 <= done_before < 30
    monkeypatch.setenv(study_module.HEARTBEAT_ENV, "1")  # its heartbeat is stale 3 s after the kill
    result = tune(path, out, say=_quiet)
    assert result["finished"] and result["trials"]["complete"] == 1
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 31))
    assert "resumed" in _rows(out)[0]["note"]


def test_the_cli_runs_a_study(tmp_path, capsys):
    path = config_file(tmp_path, tune_config(epochs=1, trials=2))
    assert main(["tune", str(path), "--out", str(tmp_path / "s"), "--trials", "2", "--pruner", "none"]) == 0
    printed = capsys.readouterr().out
    assert "trial 0: complete" in printed and "best: trial" in printed and "best config:" in printed
    assert main(["tune", str(path), "--out", str(tmp_path / "s"), "--trials", "0"]) == 2
    assert "--trials: an int >= 1" in capsys.readouterr().err


def test_without_optuna_tune_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    path = config_file(tmp_path, tune_config())
    assert main(["tune", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'fusionzoo[tune]'" in err


def test_hyperband_prunes_by_brackets(tmp_path):
    config = tune_config(epochs=4, trials=6, pruner="hyperband")
    config["tune"]["space"] = {"train.lr": {"log_uniform": [1.0e-7, 3.0e-2]}}
    result = tune(config, tmp_path / "s", say=_quiet)
    assert result["pruner"] == "HyperbandPruner" and sum(result["trials"].values()) == 6


def test_the_tune_section_is_not_part_of_a_run(tmp_path):
    """Editing the search space does not change what a run trained: --resume accepts it."""
    from fusionzoo.training import train

    run_dir = tmp_path / "run"
    train(tune_config(epochs=1), run_dir=run_dir, log=False)
    edited = tune_config(epochs=2)
    edited["tune"]["space"] = {"train.lr": {"uniform": [0.001, 0.01]}}
    assert train(edited, run_dir=run_dir, resume=True, log=False)["epochs_run"] == 2
