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
    estimate, se = permutation_shapley(model, batch, pred, permutations=300)
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
    weights = result["attention"]
    assert weights.shape == (16, 3) and torch.allclose(weights.sum(1), torch.ones(16))
    assert torch.all(weights[::3, model.modalities.index("text")] == 0)  # a missing modality gets no weight
    assert "attention" not in explain(_model("concat_mlp"), [_batch(("audio", "text", "visual"))])


def test_the_transformer_s_cls_attention_is_the_one_its_sdpa_uses():
    from fusionzoo.training.explain import cls_attention

    model = _model("transformer")
    batch = _batch(model.modalities, missing="text")
    with torch.no_grad():
        features, present = model.fusion.prepare(*model.encode(batch))
        weights = cls_attention(model.fusion, features, present)
        # the CLS query's output of the last layer's attention, rebuilt from these probabilities, is SDPA's
        fusion = model.fusion
        x, mask = fusion.tokens(features, present)
        for block in fusion.blocks[:-1]:
            x = block(x, mask)
        attn = fusion.blocks[-1].attn
        h = fusion.blocks[-1].norm1(x)
        heads = attn.num_heads
        q = attn.to_q(h[:, :1]).unflatten(-1, (heads, -1)).transpose(1, 2)
        k, v = attn.to_kv(h).unflatten(-1, (2, heads, -1)).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        rebuilt = attn.to_out((probs @ v).transpose(1, 2).flatten(2))[:, 0]
        torch.testing.assert_close(rebuilt, attn(h, mask=mask)[:, 0], rtol=1e-5, atol=1e-6)
        sizes = [features[m].shape[1] for m in fusion.modalities]
        want = torch.stack([p.sum(-1) for p in probs.mean(1)[:, 0, 1:].split(sizes, dim=1)], dim=1)
        torch.testing.assert_close(weights, want, rtol=0, atol=1e-6)
    assert weights.shape == (16, 3) and torch.all(weights.sum(1) <= 1 + 1e-6) and torch.all(weights >= 0)
    assert torch.all(weights[::3, model.modalities.index("text")] == 0)
