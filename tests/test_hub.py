"""Saved model folders (the Hub layout), model cards, and the shipped pretrained models."""

import json

import pytest
import torch
import yaml

import fusionzoo as fz
from fusionzoo.config import build_dataset, load_config
from fusionzoo.data import make_loader
from fusionzoo.errors import CheckpointError
from fusionzoo.hub import evaluate_folder, read_card, save_run
from fusionzoo.training import train
from fusionzoo.training.evaluate import evaluate
from fusionzoo.zoo import ROOT as ZOO
from fusionzoo.zoo import headline, shipped
from tests.common import AVDIGITS, needs_avdigits, tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    train(tiny_config(epochs=1), tmp / "run", log=False)
    return tmp / "run", save_run(tmp / "run", tmp / "folder", name="tiny", limitations="a test model")


def test_saved_folder_has_the_hub_layout_and_loads_the_run_weights(saved):
    run, folder = saved
    assert {p.name for p in folder.iterdir()} == {"config.yaml", "model.safetensors", "README.md", "card.json"}
    assert set(yaml.safe_load((folder / "config.yaml").read_text())) == {"model"}
    loaded, from_run = fz.from_pretrained(folder), fz.from_pretrained(run)
    batch = next(iter(make_loader(build_dataset(load_config(tiny_config()), "test"), 8)))
    assert not loaded.training
    torch.testing.assert_close(loaded(batch), from_run(batch), rtol=0, atol=0)


def test_card_records_every_subset_and_renders(saved):
    _, folder = saved
    card = read_card(folder)
    assert card["name"] == "tiny" and card["metric"] == "accuracy" and card["limitations"] == "a test model"
    assert [r["modalities"] for r in card["subsets"]] == [["text", "visual"], ["text"], ["visual"]]
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: fusionzoo\n") and "| text + visual |" in readme and "a test model" in readme
    assert "## Training recipe" in readme and card["command"] in readme
    assert "## What each modality contributes" in readme and card["contributions"]["classes"][-1]["class"] == "all"
    assert abs(sum(card["contributions"]["classes"][-1]["share"].values()) - 1) < 1e-6
    assert evaluate_folder(folder)["accuracy"] == card["test"]["accuracy"]


def test_loading_checks_the_config_against_the_weights(saved, tmp_path):
    _, folder = saved
    for name in ("model.safetensors", "README.md", "card.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["fusion"]["out_dim"] = 17
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match config.yaml: 'fusion\.[\w.]+' has shape"):
        fz.from_pretrained(tmp_path)


def test_save_pretrained_needs_the_config_and_unknown_names_are_named():
    model = fz.build_model(tiny_config())
    model.config = None
    with pytest.raises(ValueError, match="build it with fusionzoo.build_model"):
        model.save_pretrained("unused")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped model"):
        fz.from_pretrained("no_such_model")


def test_every_shipped_model_has_a_card_and_builds():
    names = shipped()
    assert {"quickstart_concat", "avdigits_concat_hard"} <= set(names)
    for name in names:
        card = read_card(ZOO / name)
        assert (ZOO / name / "README.md").read_text().count("|") > 10 and card["name"] == name
        fresh, pretrained = fz.create_model(name), fz.create_model(name, pretrained=True)
        assert not pretrained.training and fresh.state_dict().keys() == pretrained.state_dict().keys()
        assert sum(f.stat().st_size for f in (ZOO / name).iterdir()) < 1 << 20  # small enough to ship
        assert headline(name) == f"accuracy {100 * card['test']['accuracy']:.1f}% ({card['data']['name']} test)"
    assert headline("not_shipped") == "-"  # a user's own model tagged pretrained lists without a card


@pytest.mark.slow
def test_quickstart_model_reproduces_its_card():
    model = fz.create_model("quickstart_concat", pretrained=True)
    card = read_card(ZOO / "quickstart_concat")
    test_set = build_dataset(load_config({"data": card["data"], "model": model.config}), "test")
    assert evaluate(model, make_loader(test_set, 256))["accuracy"] == card["test"]["accuracy"]


@needs_avdigits
@pytest.mark.slow
def test_avdigits_model_reproduces_its_card_on_the_shared_data():
    model = fz.create_model("avdigits_concat_hard", pretrained=True)
    card = read_card(ZOO / "avdigits_concat_hard")
    test_set = build_dataset(load_config({"data": {**card["data"], "root": str(AVDIGITS)}, "model": model.config}), "test")
    assert evaluate(model, make_loader(test_set, 256))["accuracy"] == card["test"]["accuracy"]
    assert json.loads((ZOO / "avdigits_concat_hard" / "card.json").read_text())["test"]["n"] == len(test_set)


def test_torch_hub_loads_a_shipped_model_from_the_checkout():
    from tests.common import ROOT

    model = torch.hub.load(str(ROOT), "avdigits_concat_hard", source="local", pretrained=True)
    reference = fz.create_model("avdigits_concat_hard", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
