from pathlib import Path

import pytest
import torch
import yaml

import fusionzoo as fz
from fusionzoo.config import ConfigError, apply_overrides

from foundation import offline

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def base_cfg():
    return {
        "seed": 0,
        "model": {
            "encoders": {
                "audio": {"name": "feature_mlp", "in_dim": 10, "out_dim": 6},
                "visual": {"name": "feature_mlp", "in_dim": 12, "out_dim": 8},
            },
            "fusion": {"name": "concat_mlp", "out_dim": 5, "hidden_dims": [7]},
            "head": {"name": "linear", "out_dim": 3},
        },
    }


def test_configs_exist():
    assert CONFIGS, "configs/ holds no YAML files"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_builds_and_runs(path, tmp_path):
    cfg = fz.load_config(offline(yaml.safe_load(path.read_text()), tmp_path))
    if cfg.kind == "align":
        from fusionzoo.config import build_loss

        model = fz.build_model(cfg).eval()
        emb = model(model.example_input(3))
        assert torch.isfinite(build_loss(cfg)(*(emb[m] for m in model.order)))
        return
    model = fz.build_model(cfg).eval()
    out = model(model.example_input(3))
    assert out.shape == (3, model.out_dim)
    assert torch.isfinite(out).all()


def test_build_injects_derived_sizes():
    model = fz.build_model(base_cfg())
    assert model.fusion.in_dims == {"audio": 6, "visual": 8}
    assert model.head.in_dim == 5
    assert model.encoders["audio"].modality == "audio"
    out = model({"audio": torch.randn(4, 10), "visual": torch.randn(4, 12)})
    assert out.shape == (4, 3)


def test_load_from_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_cfg()))
    cfg = fz.load_config(path, overrides=["model.fusion.out_dim=9"])
    assert cfg.model["fusion"]["out_dim"] == 9 and cfg.origin == str(path) and cfg.name == "c"
    assert fz.build_model(cfg).fusion.out_dim == 9


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["model"]["fusion"].update(hidden_dimz=[3]), r"model\.fusion\.hidden_dimz: unknown argument; did you mean hidden_dims\?"),
        (lambda c: c["model"]["fusion"].update(name="concat_mpl"), r"model\.fusion\.name: unknown fusion 'concat_mpl'; did you mean 'concat_mlp'"),
        (lambda c: c["model"]["fusion"].update(in_dims={"audio": 6}), r"model\.fusion\.in_dims: derived by the builder"),
        (lambda c: c["model"]["head"].update(in_dim=5), r"model\.head\.in_dim: derived by the builder"),
        (lambda c: c["model"]["encoders"]["audio"].update(modality="audio"), r"model\.encoders\.audio\.modality: derived"),
        (lambda c: c["model"]["encoders"]["audio"].pop("name"), r"model\.encoders\.audio\.name: required"),
        (lambda c: c["model"].update(fusin={}), r"model\.fusin: unknown key; did you mean fusion\?"),
        (lambda c: c.update(sed=1), r"sed: unknown key; did you mean seed\?"),
        (lambda c: c.update(seed="x"), r"seed: expected an int"),
        (lambda c: c["model"].pop("head"), r"model\.head: required"),
        (lambda c: c["model"].update(encoders=[]), r"model\.encoders: expected a mapping"),
        (lambda c: c.update(data={"name": "no_such_dataset"}), r"data\.name: unknown dataset"),
    ],
)
def test_config_errors_name_the_path(edit, message):
    cfg = base_cfg()
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        fz.load_config(cfg)


def test_constructor_value_errors_carry_the_path():
    cfg = base_cfg()
    cfg["model"]["fusion"]["out_dim"] = -1
    with pytest.raises(ConfigError, match=r"model\.fusion: .*out_dim must be positive"):
        fz.build_model(cfg)


def test_error_names_the_file(tmp_path):
    cfg = base_cfg()
    cfg["model"]["head"]["out_dimm"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.head\.out_dimm"):
        fz.load_config(path)


def test_overrides_parse_yaml_values_and_reject_malformed():
    cfg = apply_overrides({"a": {"b": 1}}, ["a.b=[1, 2]", "a.c=true", "x.y=3.5"])
    assert cfg == {"a": {"b": [1, 2], "c": True}, "x": {"y": 3.5}}
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="a.b is not a mapping"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=2"])


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        fz.load_config(path)
    with pytest.raises(FileNotFoundError):
        fz.load_config(tmp_path / "missing.yaml")
