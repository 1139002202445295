"""Modality Shapley values: efficiency, a closed-form additive model, the permutation estimate
against the exact values, missing modalities, and ``fusionzoo explain`` on a trained run."""

import csv
import json

import pytest
import torch
from torch import nn

import fusionzoo as fz
from fusionzoo.cli import main
from fusionzoo.training import train
from fusionzoo.training.shapley import exact_shapley, interaction_index, pattern_outputs, permutation_shapley, select_value

from common import tiny_config

DIMS = {"audio": 5, "text": 3, "visual": 4, "extra": 6}


def _model(fusion, modalities=("audio", "text", "visual"), **fusion_kw):
    torch.manual_seed(0)
    encoders = {m: {"name": "feature_mlp", "in_dim": DIMS[m], "out_dim": 6 + i} for i, m in enumerate(modalities)}
    return fz.build_model({"model": {"encoders": encoders, "fusion": {"name": fusion, "out_dim": 8, **fusion_kw},
                                     "head": {"name": "linear", "out_dim": 4}}}).eval()


def _batch(modalities, n=16, missing=None):
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(n, DIMS[m], generator=g) for m in modalities}
    batch["label"] = torch.randint(0, 4, (n,), generator=g)
    batch["present"] = {m: torch.ones(n, dtype=torch.bool) for m in modalities}
    if missing:
        batch["present"][missing][::3] = False
    return batch


@pytest.mark.parametrize("fusion", ["concat_mlp", "attention", "transformer", "weighted_late"])
def test_values_sum_to_the_full_minus_the_empty_prediction(fusion):
    model = _model(fusion)
    batch = _batch(model.modalities, missing="text")
    logits = pattern_outputs(model, batch)
    pred = logits[-1].argmax(-1)
    v = select_value(logits, pred)
    phi = exact_shapley(v)
    torch.testing.assert_close(phi.sum(1), (v[-1] - v[0]).double(), rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(logits[-1], model(batch), rtol=0, atol=1e-6)  # all present = the model itself
    text = model.modalities.index("text")
    assert torch.all(phi[::3, text].abs() < 1e-6)  # a modality the sample lacks contributes nothing


def test_an_additive_model_gets_its_closed_form_values_and_no_interaction():
    """concat_mlp without hidden layers or norms, and a linear head: the logit is a sum over modalities
    of W_m (x_m or the learned missing embedding e_m), so phi_m = (H W_m (x_m - e_m))_c exactly."""
    model = _model("concat_mlp", hidden_dims=[], norm=False)
    batch = _batch(model.modalities)
    logits = pattern_outputs(model, batch)
    pred = logits[-1].argmax(-1)
    phi = exact_shapley(select_value(logits, pred))
    with torch.no_grad():
        features, _ = model.encode(batch)
        linear = next(m for m in model.fusion.modules() if isinstance(m, nn.Linear))
        start = 0
        for i, m in enumerate(model.modalities):
            width = features[m].shape[1]
            contribution = (features[m] - model.fusion.missing[m]) @ linear.weight[:, start : start + width].T @ model.head.fc.weight.T
            start += width
            torch.testing.assert_close(phi[:, i], contribution.gather(1, pred[:, None]).squeeze(1).double(), rtol=1e-5, atol=1e-5)
    assert interaction_index(select_value(logits, pred)).abs().max() < 1e-5


def test_the_permutation_estimate_agrees_with_the_exact_values_within_its_error():
    model = _model("attention", modalities=("audio", "extra", "text", "visual"))
    batch = _batch(model.modalities)
    pred = model(batch).argmax(-1)
    exact = exact_shapley(select_value(pattern_outputs(model, batch), pred))
    estimate, se = permutation_shapley(model, batch, lambda logits: select_value(logits, pred), permutations=300)
    assert torch.all((estimate - exact).abs() <= 4 * se + 1e-6)
    assert se.max() > 0


def test_interaction_is_symmetric_and_sees_synergy():
    """v(S) = 1 only when both of two players are present: all of it is their interaction."""
    v = torch.tensor([0.0, 0.0, 0.0, 1.0])[:, None]  # patterns 00, 01, 10, 11
    inter = interaction_index(v)
    assert inter[0, 0, 1] == inter[0, 1, 0] == 1.0 and torch.allclose(exact_shapley(v), torch.tensor([[0.5, 0.5]], dtype=torch.float64))


@pytest.mark.slow
def test_explain_cli_on_a_trained_run_writes_values_summary_and_plots(tmp_path, capsys):
    train(tiny_config(epochs=1), run_dir=tmp_path / "run", log=False)
    out = tmp_path / "explained"
    assert main(["explain", str(tmp_path / "run"), "--samples", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Modality contributions" in printed and "synergy" in printed
    rows = list(csv.DictReader((out / "shapley.csv").open()))
    assert len(rows) == 20
    mods = [k.removeprefix("phi:") for k in rows[0] if k.startswith("phi:")]
    for row in rows:
        total = sum(float(row[f"phi:{m}"]) for m in mods)
        assert abs(total - (float(row["v_all"]) - float(row["v_none"]))) < 1e-3 * max(1.0, abs(float(row["v_all"])))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exact"] and summary["classes"][-1]["class"] == "all" and abs(sum(summary["classes"][-1]["share"].values()) - 1) < 1e-6
    for name in ("summary.md", "shapley_classes.png", "shapley_samples.png", "interaction.png"):
        assert (out / name).is_file(), name
    assert main(["explain", str(tmp_path / "run"), "--samples", "0"]) == 2


def test_the_attention_block_s_weights_are_exported_beside_the_values():
    from fusionzoo.training.explain import explain

    model = _model("attention")
    batch = _batch(model.modalities, missing="text")
    result = explain(model, [batch])
    weights = torch.stack([result[f"attention:{m}"] for m in model.modalities], dim=1)
    assert weights.shape == (16, 3) and torch.allclose(weights.sum(1), torch.ones(16))
    assert torch.all(weights[::3, model.modalities.index("text")] == 0)  # a missing modality gets no weight
    assert not any(k.startswith("attention:") for k in explain(_model("concat_mlp"), [_batch(("audio", "text", "visual"))]))


def test_attention_probabilities_are_the_ones_sdpa_applies():
    """The output rebuilt from ``probs`` (``to_out(probs @ v)``) is the layer's own, masks included."""
    from einops import rearrange

    from fusionzoo.layers.attention import Attention, GroupedCrossAttentionBlock

    torch.manual_seed(0)
    attn = Attention(8, num_heads=2, context_dim=6).eval()
    x, context = torch.randn(3, 4, 8), torch.randn(3, 5, 6)
    mask = torch.rand(3, 5) > 0.4
    mask[:, 0] = True
    with torch.no_grad():
        probs = attn.probs(x, context, mask)
        v = rearrange(attn.to_kv(context), "b s (two k d) -> two b k s d", two=2, k=2)[1]
        rebuilt = attn.to_out(rearrange(probs @ v, "b k n d -> b n (k d)"))
        torch.testing.assert_close(rebuilt, attn(x, context, mask), rtol=1e-5, atol=1e-6)
        assert torch.all(probs.masked_select(~mask[:, None, None, :].expand_as(probs)) == 0)
        block = GroupedCrossAttentionBlock(2, 8, num_heads=2).eval()
        x, context, mask = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8), torch.rand(2, 3, 5) > 0.4
        mask[..., 0] = True
        probs = block.probs(x, context, mask)
        v = rearrange(block.to_kv(block.norm_kv(context)), "g b s (two k d) -> two g b k s d", two=2, k=2)[1]
        attended = x + block.to_out(rearrange(probs @ v, "g b k n d -> g b n (k d)"))
        rebuilt = attended + block.fc2(block.act(block.fc1(block.norm2(attended))))
        torch.testing.assert_close(rebuilt, block(x, context, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer", "bottleneck", "cross_attention"])
def test_token_blocks_attention_readings(name):
    """Per sample, the readings are shares of one attention row: in [0, 1], their sum at most 1, and 0
    for a modality (or, in ``cross_attention``, a source or a target) the sample lacks."""
    from fusionzoo.registry import FUSIONS
    from fusionzoo.training.attention_maps import attention_readings

    torch.manual_seed(0)
    dims, tokens = {"audio": 5, "text": 3, "visual": 4}, {"audio": 6, "text": 4, "visual": 1}
    block = FUSIONS.get(name).build(in_dims=dims, out_dim=8, hidden_dim=16, num_heads=2, depth=2).eval()
    features = {m: torch.randn(5, tokens[m], d) for m, d in dims.items()}
    present = {m: torch.ones(5, tokens[m], dtype=torch.bool) for m in dims}
    present["text"][0] = False  # sample 0 lacks text
    present["audio"][1, 3:] = False  # sample 1's audio is shorter
    with torch.no_grad():
        readings = attention_readings(block, *block.prepare(features, present))
    values = torch.stack(list(readings.values()), dim=1)
    assert values.shape == (5, 6 if name == "cross_attention" else 3)
    assert torch.all(values >= 0) and torch.all(values <= 1 + 1e-6)
    if name == "cross_attention":
        assert set(readings) == {f"{t}<-{s}" for t in dims for s in dims if s != t}
        for key, value in readings.items():
            assert ("text" not in key or value[0] == 0) and value[1:].gt(0).all(), key  # text missing as a source or a target
    else:
        assert list(readings) == sorted(dims) and torch.all(values.sum(1) <= 1 + 1e-6) and readings["text"][0] == 0
        assert values[1:].gt(0).all()


@pytest.mark.parametrize("task,value", [("multilabel", "prob"), ("regression", "output")])
def test_every_output_of_a_multilabel_or_regression_model_is_explained(task, value):
    """Each label's (target's) values sum to its output minus the empty model's; the permutation
    estimate agrees with them within its error; a classification value is refused for regression."""
    from fusionzoo.training.explain import explain

    model = _model("attention", modalities=("audio", "extra", "text", "visual"))
    batch = _batch(model.modalities, missing="text")
    batch["label"] = torch.rand(16, 4) if task == "regression" else (torch.rand(16, 4) > 0.5).float()
    result = explain(model, [batch], value=value, task=task)
    assert result["phi"].shape == (16, 4, 4) and result["interaction"].shape == (16, 4, 4, 4)
    torch.testing.assert_close(result["phi"].sum(-1), result["v_all"] - result["v_none"], rtol=0, atol=1e-5)
    with torch.no_grad():
        outputs = model(batch)
    torch.testing.assert_close(result["v_all"].float(), outputs.sigmoid() if value == "prob" else outputs, rtol=0, atol=1e-6)
    estimate = explain(model, [batch], value=value, task=task, exact_up_to=0, permutations=200)
    assert "interaction" not in estimate and estimate["phi"].shape == (16, 4, 4)
    error = (estimate["phi"] - result["phi"]).abs()
    assert torch.all(error <= 4 * estimate["se"] + 1e-6)
    with pytest.raises(ValueError, match="for a regression run the value must be one of output"):
        explain(model, [batch], value="logit", task="regression")
