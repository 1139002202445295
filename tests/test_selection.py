"""Selection on the validation split: best checkpoint, early stopping, test evaluated once."""

import json

import pytest
import torch
from common import VISUAL_TEXT, tiny_config

from fusionzoo.config import ConfigError
from fusionzoo.training import Classification, Selection, evaluate_run, load_run, resolve_checkpoint, train


def cfg(**train_opts):
    return tiny_config(n=64, val_n=48, test_n=40, **{"epochs": 3, **train_opts})


def history(*values, metric="accuracy"):
    return [{"epoch": i + 1, "val": {metric: v}} for i, v in enumerate(values)]


def test_selection_best_min_delta_and_patience():
    s = Selection.for_metric("accuracy", {"patience": 2, "min_delta": 0.05})
    h = history(0.5, 0.53, 0.60, 0.62, 0.64)
    assert s.best(h) == (5, 0.64)  # the best value is the best epoch: min_delta is for stopping only
    # improvements by more than 0.05: epochs 1 and 3 (0.53, 0.62, 0.64 do not beat 0.5 / 0.60 by it)
    assert not s.should_stop(h[:4]) and s.should_stop(h)
    assert s.is_best(h[:3]) and s.is_best(h[:4]) and s.is_best(h)
    slow = history(0.50, 0.53, 0.56, 0.59)  # small steps add up: 0.56 beats the reference 0.50 by more than 0.05
    assert not s.should_stop(slow) and s.best(slow) == (4, 0.59)
    nan = float("nan")
    assert s.best(history(nan, 0.4, nan, 0.3)) == (2, 0.4) and s.best(history(nan, None)) == (None, None)  # NaN never best
    assert Selection.for_metric("accuracy").best(history(0.133, 0.260, 0.2)) == (2, 0.26)
    loss = Selection.for_metric("loss")
    assert loss.mode == "min" and loss.best(history(1.0, 0.7, 0.9, metric="loss")) == (2, 0.7)
    assert not loss.should_stop(history(1.0, 2.0, 3.0, metric="loss"))  # no patience: never stops
    assert Selection.for_metric("macro_f1").best([]) == (None, None)


def test_test_split_is_evaluated_once_after_the_last_epoch(tmp_path, monkeypatch):
    calls = []
    original = Classification.evaluate

    def spy(self, model, loaders, split, device, **kwargs):
        log = tmp_path / "run" / "log.jsonl"
        calls.append((split, len(log.read_text().splitlines()) if log.exists() else 0))
        return original(self, model, loaders, split, device, **kwargs)

    monkeypatch.setattr(Classification, "evaluate", spy)
    summary = train(cfg(), run_dir=tmp_path / "run", log=False)
    # val after each epoch's training (before its log line), test once after all three are logged
    assert calls == [("val", 0), ("val", 1), ("val", 2), ("test", 3)]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("test" not in r for r in records) and all("val" in r for r in records)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "best_test_accuracy" not in metrics and metrics["test"]["n"] == 40 and metrics["val"]["n"] == 48
    best = max(records, key=lambda r: r["val"]["accuracy"])  # first of the ties, as Selection keeps
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val"] == best["val"]["accuracy"]
    assert summary["selected_epoch"] == metrics["best_epoch"] and summary["select_metric"] == "accuracy"


def test_early_stopping_keeps_the_best_checkpoint_and_tests_it(tmp_path):
    run = tmp_path / "run"
    # No later loss beats epoch 1's by 100, so patience 2 stops after epoch 3; the best of the three is kept.
    opts = {"epochs": 6, "select_metric": "loss", "early_stopping": {"patience": 2, "min_delta": 100.0}, "keep_checkpoints": 1}
    summary = train(cfg(**opts), run_dir=run, log=False)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val"]["loss"])["epoch"]
    assert summary["epochs_run"] == 3 and summary["stopped_early"] and summary["best_epoch"] == best
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == sorted({f"epoch-{best:03d}", "epoch-003"})
    assert (run / "checkpoints" / "best").read_text().strip() == f"epoch-{best:03d}"
    _, checkpoint = resolve_checkpoint(run)  # what eval, init_from and teachers load
    assert checkpoint.name == f"epoch-{best:03d}"
    model, _, _ = load_run(run)
    from fusionzoo.config import build_dataset, load_config
    from fusionzoo.data.loader import make_loader
    from fusionzoo.training import evaluate

    test_set = build_dataset(load_config(cfg(**opts)), "test")
    again = evaluate(model, make_loader(test_set, 256), "multiclass")
    assert again["accuracy"] == summary["test"]["accuracy"] and again["loss"] == pytest.approx(summary["test"]["loss"])
    resumed = train(cfg(**opts), run_dir=run, resume=True, log=False)  # a stopped run stays stopped
    assert resumed["epochs_run"] == 3 and resumed["test"] == summary["test"]
    assert evaluate_run(run)["checkpoint"].endswith(f"epoch-{best:03d}")


def test_select_last_tests_the_last_epoch(tmp_path):
    summary = train(cfg(select="last", select_metric="macro_f1"), run_dir=tmp_path / "run", log=False)
    assert summary["selected_epoch"] == 3 and summary["select_metric"] == "macro_f1"
    assert resolve_checkpoint(tmp_path / "run")[1].name == "epoch-003"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert summary["val"] == log[-1]["val"]


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"select_metric": "R@1"}, "train.select_metric: unknown metric 'R@1'"),
        ({"select": "test"}, "train.select: invalid value 'test'"),
        ({"early_stopping": {"patience": 0}}, "train.early_stopping.patience: expected an int >= 1"),
        ({"early_stopping": {"wait": 3}}, "train.early_stopping.wait: unknown key"),
    ],
)
def test_bad_selection_settings_name_the_key(tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message):
        train(cfg(**opts), run_dir=tmp_path / "run", log=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_alignment_selects_on_validation_retrieval(tmp_path):
    config = {
        "seed": 0,
        "data": {"name": "synthetic", "n": 64, "val_n": 32, "test_n": 32, "num_classes": 8},
        "align": {
            "encoders": dict(VISUAL_TEXT),
            "loss": {"name": "info_nce"},
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
    }
    summary = train(config, run_dir=tmp_path / "run", log=False)
    assert summary["select_metric"] == "mean_R@1" and 0 <= summary["best_val"] <= 1
    assert "visual->text R@1" in summary["test"] and any(k.startswith("zero_shot_") for k in summary["test"])
    assert torch.isfinite(torch.tensor(summary["test"]["mean_R@1"]))
