"""train.loggers: TensorBoard event files and an MLflow store read back with the tools' own readers,
also across an interrupted and resumed run; a failing logger never stops training."""

import json
import shutil
import warnings

import pytest

import fusionzoo as fz
from fusionzoo.training import train
from fusionzoo.training.loggers import RunLogger
from tests.common import tiny_config

pytest.importorskip("tensorboard")


def _interrupt_after_epoch_2(run_dir):
    """As if the process died during epoch 3 after its steps were logged but before its checkpoint
    was written: the newest checkpoint is epoch 2, the tracking tools saw epoch 3 already."""
    shutil.rmtree(run_dir / "checkpoints" / "epoch-003")
    (run_dir / "checkpoints" / "last").write_text("epoch-002\n")
    best = run_dir / "checkpoints" / "best"
    if best.read_text().strip() == "epoch-003":
        best.unlink()
    (run_dir / "metrics.json").unlink()


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_has_every_epoch_once_after_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(epochs=3, loggers=["tensorboard"], log_every=1, keep_checkpoints=3)  # 48 samples / 16: 3 steps an epoch
    first = train(config, run_dir=run_dir, log=False)
    _interrupt_after_epoch_2(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resume's note on the missing best marker
        again = train(config, run_dir=run_dir, resume=True, log=False)
    assert again["weights_sha256"] == first["weights_sha256"]
    val = _scalars(run_dir / "tensorboard", "val/accuracy")
    history = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [step for step, _ in val] == [3, 6, 9]
    assert [v for _, v in val] == pytest.approx([h["val"]["accuracy"] for h in history])
    assert [step for step, _ in _scalars(run_dir / "tensorboard", "step/loss")] == list(range(1, 10))
    assert len(_scalars(run_dir / "tensorboard", "test/accuracy")) == 1


def test_mlflow_store_has_params_metrics_and_the_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    import mlflow

    monkeypatch.chdir(tmp_path)  # the default store: ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    config = tiny_config(epochs=3, loggers=[{"name": "mlflow", "experiment": "tiny"}], log_every=2, keep_checkpoints=3) | {"name": "tiny"}
    train(config, run_dir=run_dir, log=False)
    _interrupt_after_epoch_2(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(config, run_dir=run_dir, resume=True, log=False)

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len(runs) == 1  # the resume continued the same MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["train.weight_decay"] == "0.01"  # defaults resolved
    client = MlflowClient(uri)
    val = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert sorted(m.step for m in val) == [3, 6, 9]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")] == [2, 4, 6, 8]
    assert run.data.metrics["test/accuracy"] == pytest.approx(summary["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "checkpoint"} <= artifacts
    assert "checkpoint/model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}


@pytest.fixture
def broken_logger():
    @fz.register_logger("test_broken")
    class Broken(RunLogger):
        """Fails at its first epoch."""

        calls = []

        def log_epoch(self, step, record):
            self.calls.append(record["epoch"])
            raise ConnectionError("server down")

    yield Broken
    fz.LOGGERS.unregister("test_broken")


def test_a_failing_logger_is_one_warning_and_training_goes_on(tmp_path, broken_logger):
    with pytest.warns(UserWarning, match=r"test_broken failed in log_epoch \(ConnectionError: server down\)") as caught:
        summary = train(tiny_config(epochs=3, loggers=["test_broken"]), run_dir=tmp_path / "run", log=False)
    assert summary["epochs_run"] == 3 and summary["test"] is not None
    assert broken_logger.calls == [1]  # off after its failure
    assert sum("test_broken" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize(
    "loggers, message",
    [
        (["tensorbord"], r"train.loggers\[0\].name: unknown logger 'tensorbord'; did you mean 'tensorboard'"),
        ([{"name": "mlflow", "uri": "x"}], r"train.loggers\[0\].*uri"),
        (["tensorboard", "tensorboard"], "each logger once"),
        ("tensorboard", r"train.loggers: expected a list"),
    ],
)
def test_bad_logger_sections_name_the_key(loggers, message):
    with pytest.raises(fz.ConfigError, match=message):
        fz.load_config(tiny_config(loggers=loggers))


def test_loggers_may_change_on_resume(tmp_path):
    """Tracking is not part of the result: --resume with loggers added is the same run."""
    run_dir = tmp_path / "run"
    train(tiny_config(epochs=1), run_dir=run_dir, log=False)
    summary = train(tiny_config(epochs=2, loggers=["tensorboard"]), run_dir=run_dir, resume=True, log=False)
    assert summary["epochs_run"] == 2
    assert [step for step, _ in _scalars(run_dir / "tensorboard", "val/accuracy")] == [6]  # from the resumed epoch on


def test_compare_names_each_replicate_s_tracking_run(tmp_path, monkeypatch):
    """A grid's cells log into one MLflow experiment (the output folder's name), a run per
    replicate named by its folder and tagged with its cell, fold and seed."""
    from fusionzoo import launch
    from fusionzoo.compare import runner
    from fusionzoo.compare.grid import Cell, Replicate
    from fusionzoo.training.loggers import log_identity

    seen = {}

    def fake_run(command, env, **kwargs):
        seen.update(env)
        return type("Done", (), {"returncode": 1})()

    monkeypatch.setattr(launch.subprocess, "run", fake_run)  # the cell's train process, as run_logged starts it
    cell = Cell("fusion=gmu", ("model.fusion.name=gmu",))
    runner._run_one("c.yaml", cell, Replicate(3, 1, 5), tmp_path / "grid_x", 1, str(tmp_path))
    for key in ("FUSIONZOO_LOG_EXPERIMENT", "FUSIONZOO_LOG_RUN", "FUSIONZOO_LOG_TAGS"):
        monkeypatch.setenv(key, seen[key])
    experiment, name, tags = log_identity("tiny", tmp_path / "run")
    assert (experiment, name) == ("grid_x", "fusion=gmu/fold-1/seed-3")
    assert tags == {"cell": "fusion=gmu", "seed": "3", "fold": "1"}
    assert log_identity("tiny", tmp_path / "run", {"experiment": "study", "run": "trial-0002"})[:2] == ("study", "trial-0002")
