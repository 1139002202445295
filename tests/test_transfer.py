"""Transfer utilities: partial loading, freezing (and frozen BatchNorm), learning-rate groups, strategies."""

import pytest
import torch
from torch import nn

import fusionzoo as fz
from fusionzoo.training import load_run, train
from fusionzoo.transfer import (
    L2SP,
    GradualUnfreezer,
    apply_strategy,
    freeze,
    load_partial,
    param_groups,
    unfreeze,
)

from common import tiny_config


def small_model():
    return fz.build_model(
        {
            "model": {
                "encoders": {
                    "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4, 8], "out_dim": 8},
                    "text": {"name": "text_embedding", "vocab_size": 20, "embed_dim": 4, "out_dim": 6},
                },
                "fusion": {"name": "concat_mlp", "out_dim": 8, "hidden_dims": []},
                "head": {"name": "linear", "out_dim": 3},
            }
        }
    )


def test_load_partial_reports_renamed_and_reshaped_keys(tmp_path):
    src = small_model()
    state = {k.replace("encoders.visual.", "backbone."): v for k, v in src.state_dict().items()}
    state["head.fc.weight"] = torch.randn(5, 8)  # reshaped
    state["extra.thing"] = torch.zeros(1)  # unexpected
    del state["head.fc.bias"]  # missing
    path = tmp_path / "w.pt"
    torch.save(state, path)
    dst = small_model()
    with pytest.raises(ValueError, match=r"(?s)shape mismatch.*head.fc.weight model \[3, 8\] file \[5, 8\]"):
        load_partial(dst, path, key_map={"backbone.": "encoders.visual."})
    report = load_partial(dst, path, key_map={"backbone.": "encoders.visual."}, strict_shapes=False)
    assert report.unexpected == ["extra.thing"]
    assert set(report.missing) == {"head.fc.bias"} and set(report.mismatched) == {"head.fc.weight"}
    assert "encoders.visual.features.0.0.weight" in report.loaded
    torch.testing.assert_close(dst.encoders["visual"].features[0][0].weight, src.encoders["visual"].features[0][0].weight)
    text = str(report)
    assert "loaded" in text and "mismatched      1  head.fc.weight model [3, 8] file [5, 8]" in text


def test_freeze_unfreeze_and_frozen_batchnorm_statistics_stay_put():
    model = small_model()
    changed = freeze(model, "encoders.visual.*")
    assert changed and all(n.startswith("encoders.visual.") for n in changed)
    assert all(not p.requires_grad for p in model.encoders["visual"].parameters())
    bn = model.encoders["visual"].features[0][1]
    before = bn.running_mean.clone()
    model.train()  # must not wake the frozen BatchNorm
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        batch = {"visual": torch.randn(4, 1, 16, 16) * 3 + 1, "text": torch.randint(1, 20, (4, 5))}
        model(batch).sum().backward()
        opt.step()
    assert torch.equal(bn.running_mean, before) and not bn.training
    assert unfreeze(model, "encoders.visual.*") == changed
    model.train()
    model({"visual": torch.randn(4, 1, 16, 16) + 5, "text": torch.randint(1, 20, (4, 5))})
    assert not torch.equal(bn.running_mean, before) and bn.training


def test_param_groups_apply_multipliers():
    model = small_model()
    groups = param_groups(model, 1e-3, {"encoders.*": 0.1, "head.*": 2.0})
    lrs = {g["lr_mult"]: g["lr"] for g in groups}
    assert lrs == {0.1: pytest.approx(1e-4), 1.0: pytest.approx(1e-3), 2.0: pytest.approx(2e-3)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # a valid optimizer spec


def test_strategies_and_gradual_unfreezing():
    model = small_model()
    apply_strategy(model, "linear_probe")
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("encoders."))
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoders."))
    apply_strategy(model, "finetune")
    assert all(p.requires_grad for p in model.parameters())
    unfreezer = apply_strategy(model, "gradual")
    assert isinstance(unfreezer, GradualUnfreezer)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("encoders."))
    first = unfreezer.step(0)
    assert first and all(n.startswith("encoders.text.") for n in first)
    assert all(n.startswith("encoders.visual.") for n in unfreezer.step(1))
    with pytest.raises(ValueError, match="unknown strategy"):
        apply_strategy(model, "surgery")
    apply_strategy(model, "finetune")
    layers = apply_strategy(model, "gradual", [["encoders.visual.features.1.*"], ["encoders.visual.*"]])  # layer by layer
    assert all(n.startswith("encoders.visual.features.1.") for n in layers.step(0))
    assert layers.step(1) and all(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoders.visual."))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoders.text."))  # never grouped


def test_a_different_architecture_gives_a_report_not_a_crash():
    other = nn.Sequential(nn.Linear(3, 4))
    report = load_partial(small_model(), other.state_dict())
    assert report.loaded == [] and report.unexpected == ["0.weight", "0.bias"]


def test_load_partial_include_exclude_patterns_and_report(tmp_path):
    src, dst = small_model(), small_model()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_partial(dst, src.state_dict(), include=["encoders.visual.features.0.*"], exclude=["*.bias"])
    assert report.loaded and all(k.startswith("encoders.visual.features.0.") and not k.endswith(".bias") for k in report.loaded)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k] if k in report.loaded else before[k])
    assert set(report.skipped) == set(src.state_dict()) - set(report.loaded) and not report.missing
    assert "by pattern" in str(report)


def test_l2sp_is_half_alpha_squared_distance_to_the_source_and_its_gradient():
    model = small_model()
    names = [n for n, _ in model.named_parameters() if n.startswith("encoders.visual")]
    reg = L2SP(model, names, alpha=0.1)
    assert reg(model).item() == 0.0
    with torch.no_grad():
        for n in names:
            model.get_parameter(n).add_(0.5)
    expected = 0.5 * 0.1 * sum(model.get_parameter(n).numel() * 0.25 for n in names)
    assert reg(model).item() == pytest.approx(expected, rel=1e-5)
    reg(model).backward()
    p = model.get_parameter(names[0])
    torch.testing.assert_close(p.grad, torch.full_like(p, 0.1 * 0.5))
    groups = param_groups(model, 1e-3, weight_decay=0.01, no_decay=names)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(id(model.get_parameter(n)) not in decayed for n in names)
    assert id(model.head.fc.weight) in decayed


def test_l2sp_and_include_from_config_keep_the_trunk_near_the_source(tmp_path):
    source = tmp_path / "source"
    train(tiny_config(epochs=1), run_dir=source, log=False)
    init = {"path": str(source), "include": ["encoders.visual.*"]}
    runs = {}
    for name, extra in {"plain": {}, "l2sp": {"regularize": {"l2sp": 10.0}}}.items():
        run = tmp_path / name
        train(tiny_config(epochs=2, lr=0.05, init_from=init, **extra), run_dir=run, log=False)
        runs[name] = run
        report = (run / "init_report.txt").read_text()
        assert "by pattern" in report
    src = load_run(source)[0].encoders["visual"].state_dict()

    def distance(run):
        enc = load_run(run)[0].encoders["visual"].state_dict()
        return sum((enc[k].float() - src[k].float()).pow(2).sum().item() for k in src if k.endswith("weight"))
    assert distance(runs["l2sp"]) < distance(runs["plain"])
    with pytest.raises(fz.ConfigError, match=r"train.regularize.l2sp: needs train.init_from"):
        train(tiny_config(regularize={"l2sp": 0.1}), run_dir=tmp_path / "bad", log=False)
