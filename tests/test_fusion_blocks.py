"""Per-block reference checks: each fusion block against a plain formula or an equivalent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

import fusionzoo as fz
from fusionzoo.fusion import ModalityDropout
from fusionzoo.fusion.tensor import augment

DIMS3 = {"audio": 5, "text": 7, "visual": 6}
DIMS2 = {"audio": 5, "visual": 6}


def rand_feats(dims, b=6):
    return {m: torch.randn(b, d) for m, d in dims.items()}


def mask(*bits):
    return torch.tensor(bits, dtype=torch.bool)


@pytest.mark.parametrize("name", fz.list_fusions())
@pytest.mark.parametrize("dims", [DIMS2, DIMS3], ids=["2mod", "3mod"])
def test_shape_for_two_and_three_modalities(name, dims):
    entry = fz.FUSIONS.get(name)
    roles = {arg: "visual" for arg in entry.role_args}
    if entry.num_modalities not in (None, len(dims)):
        with pytest.raises(ValueError, match=f"exactly {entry.num_modalities} modalities, got {len(dims)}"):
            fz.create_fusion(name, in_dims=dims, out_dim=8, **roles)
        return
    block = fz.create_fusion(name, in_dims=dims, out_dim=8, **roles)
    feats = fz.fusion.example_features(dims, 4, block.input_kind)
    assert block(feats).shape == (4, 8)


# ---------------------------------------------------------------- pooled blocks


def test_concat_mlp_reference():
    block = fz.create_fusion("concat_mlp", in_dims=DIMS3, out_dim=4, hidden_dims=[]).eval()
    x = rand_feats(DIMS3)
    present = {"text": mask(1, 0, 1, 1, 0, 1)}
    parts = []
    for m in ("audio", "text", "visual"):
        normed = F.layer_norm(x[m], (DIMS3[m],), block.norms[m].weight, block.norms[m].bias)
        if m == "text":
            normed = torch.where(present["text"][:, None], normed, block.missing["text"])
        parts.append(normed)
    ref = block.mlp[0](torch.cat(parts, -1))
    torch.testing.assert_close(block(x, present), ref)
    assert len(block.mlp) == 1


def test_weighted_late_learned_weights_renormalise():
    block = fz.create_fusion("weighted_late", in_dims=DIMS3, out_dim=3, weighting="learned").eval()
    with torch.no_grad():
        block.weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x = rand_feats(DIMS3, b=2)
    present = {"text": mask(1, 0)}
    outs = {m: block.heads[m](x[m]) for m in DIMS3}
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    ref0 = sum(w[i] * outs[m][0] for i, m in enumerate(("audio", "text", "visual")))
    w_no_text = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    ref1 = w_no_text[0] * outs["audio"][1] + w_no_text[1] * outs["visual"][1]
    out = block(x, present)
    torch.testing.assert_close(out[0], ref0)
    torch.testing.assert_close(out[1], ref1)


def test_weighted_late_fixed_weights_and_probs():
    block = fz.create_fusion(
        "weighted_late", in_dims=DIMS2, out_dim=4, weighting="fixed", weights={"audio": 1.0, "visual": 3.0}, combine="probs"
    ).eval()
    x = rand_feats(DIMS2, b=3)
    present = {"audio": mask(1, 1, 0), "visual": mask(1, 0, 1)}
    pa, pv = (torch.softmax(block.heads[m](x[m]), -1) for m in ("audio", "visual"))
    out = block(x, present)
    torch.testing.assert_close(out[0], torch.log(0.25 * pa[0] + 0.75 * pv[0]))
    torch.testing.assert_close(out[1], torch.log(pa[1]))
    torch.testing.assert_close(out[2], torch.log(pv[2]))
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3))
    nothing = block(x, {"audio": mask(0, 0, 0), "visual": mask(0, 0, 0)})
    torch.testing.assert_close(nothing.exp().sum(-1), torch.ones(3))


def test_weighted_late_gated_weights_sum_to_one_over_present():
    block = fz.create_fusion("weighted_late", in_dims=DIMS3, out_dim=4, weighting="gated")
    x = rand_feats(DIMS3)
    present = fz.fusion.example_present(block.modalities, 6)
    f, p = block.prepare(x, present)
    w = block.modality_weights(f, p)
    stacked = torch.stack([p[m] for m in block.modalities], 1)
    torch.testing.assert_close(w.sum(1), stacked.any(1).float())
    assert (w[~stacked] == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weighting": "fixed"}, "weights are given exactly when"),
        ({"weighting": "fixed", "weights": {"audio": 1.0}}, "weights must name exactly"),
        ({"weighting": "fixed", "weights": {"audio": 0.0, "visual": 0.0}}, "not all zero"),
        ({"weighting": "softmax"}, "weighting must be one of"),
        ({"combine": "votes"}, "combine must be one of"),
    ],
)
def test_weighted_late_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fz.create_fusion("weighted_late", in_dims=DIMS2, out_dim=3, **kwargs)


def test_attention_matches_torchmultimodal_formula_and_masks():
    block = fz.create_fusion("attention", in_dims=DIMS3, out_dim=4).eval()
    x = rand_feats(DIMS3, b=5)
    order = ("audio", "text", "visual")
    # All present: softmax(Linear(cat)) weighted sum of projections (the flags are a constant 1).
    cat = torch.cat([x[m] for m in order] + [torch.ones(5, 3)], -1)
    w = torch.softmax(block.score(cat), -1)
    ref = sum(w[:, i : i + 1] * block.proj[m](x[m]) for i, m in enumerate(order))
    torch.testing.assert_close(block(x), ref)
    present = {"audio": mask(1, 0, 0, 1, 1), "visual": mask(1, 1, 0, 0, 1)}
    f, p = block.prepare(x, present)
    weights = block.attention_weights(f, p)
    stacked = torch.stack([p[m] for m in order], 1)
    torch.testing.assert_close(weights.sum(1), torch.ones(5))  # text is always present here
    assert (weights[~stacked] == 0).all()


@pytest.mark.parametrize("pool", ["mean", "max", "sum"])
def test_deepset_pools_present_modalities(pool):
    block = fz.create_fusion("deepset", in_dims=DIMS3, out_dim=4, hidden_dim=8, hidden_dims=[], pool=pool).eval()
    x = rand_feats(DIMS3, b=3)
    present = {"text": mask(0, 1, 1)}
    h = {m: F.gelu(block.phi[m](x[m])) for m in DIMS3}
    keep = [["audio", "visual"], ["audio", "text", "visual"], ["audio", "text", "visual"]]
    op = {"mean": lambda t: t.mean(0), "max": lambda t: t.amax(0), "sum": lambda t: t.sum(0)}[pool]
    ref = torch.stack([block.rho(op(torch.stack([h[m][i] for m in keep[i]]))) for i in range(3)])
    torch.testing.assert_close(block(x, present), ref)


def test_deepset_is_permutation_invariant_over_same_sized_modalities():
    dims = {"a": 6, "b": 6}
    block = fz.create_fusion("deepset", in_dims=dims, out_dim=4).eval()
    x = rand_feats(dims)
    swapped = fz.create_fusion("deepset", in_dims=dims, out_dim=4).eval()
    swapped.load_state_dict(block.state_dict())
    with torch.no_grad():
        swapped.phi["a"].load_state_dict(block.phi["b"].state_dict())
        swapped.phi["b"].load_state_dict(block.phi["a"].state_dict())
    torch.testing.assert_close(swapped({"a": x["b"], "b": x["a"]}), block(x))


def test_gmu_bimodal_is_sigmoid_gate():
    block = fz.create_fusion("gmu", in_dims=DIMS2, out_dim=4).eval()
    x = rand_feats(DIMS2)
    logits = block.gate(torch.cat([x["audio"], x["visual"], torch.ones(6, 2)], -1)).view(6, 2, 4)
    z = torch.sigmoid(logits[:, 0] - logits[:, 1])
    ha, hv = torch.tanh(block.proj["audio"](x["audio"])), torch.tanh(block.proj["visual"](x["visual"]))
    torch.testing.assert_close(block(x), z * ha + (1 - z) * hv)
    # Only one modality present: its gate is 1.
    only = block(x, {"visual": mask(0, 0, 0, 0, 0, 0)})
    torch.testing.assert_close(only, ha)


def test_film_reference_and_identity_without_conditioners():
    block = fz.create_fusion("film", in_dims=DIMS3, out_dim=4, target="visual", hidden_dim=8).eval()
    assert block.conditioners == ("audio", "text")
    x = rand_feats(DIMS3)
    h = block.target_proj(x["visual"])
    gamma, beta = block.film(torch.cat([x["audio"], x["text"], torch.ones(6, 2)], -1)).chunk(2, -1)
    torch.testing.assert_close(block(x), block.out(F.relu((1 + gamma) * h + beta)))
    alone = block({"visual": x["visual"]})
    torch.testing.assert_close(alone, block.out(F.relu(h)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "depth"}, "target 'depth' is not one of"),
        ({"target": "visual", "conditioners": ["visual"]}, "must be one of"),
        ({"target": "visual", "conditioners": ["audio"]}, r"\['text'\] are in in_dims but neither"),
    ],
)
@pytest.mark.parametrize("name", ["film", "multiplicative"])
def test_role_blocks_validate_roles(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fz.create_fusion(name, in_dims=DIMS3, out_dim=4, **kwargs)


@pytest.mark.parametrize("dims", [DIMS3, {"audio": 5, "text": 2, "visual": 12}], ids=["cond-first", "target-first"])
def test_multiplicative_matches_per_sample_hypernetwork(dims):
    block = fz.create_fusion("multiplicative", in_dims=dims, out_dim=4, target="visual").eval()
    assert block.target_first == (dims["audio"] + dims["text"] + 2 < dims["visual"])
    x = rand_feats(dims, b=3)
    present = {"audio": mask(1, 0, 1)}
    out = block(x, present)
    for i in range(3):
        a = x["audio"][i] if present["audio"][i] else torch.zeros(dims["audio"])
        c = torch.cat([a, x["text"][i], torch.tensor([float(present["audio"][i]), 1.0])])
        W = block.base.weight.T + torch.einsum("k,kio->io", c, block.hyper_weight_kio)
        b = block.base.bias + block.cond_bias.weight @ c
        torch.testing.assert_close(out[i], x["visual"][i] @ W + b)


@pytest.mark.parametrize("contract", [False, True])
def test_tensor_fusion_equals_explicit_outer_product(contract):
    dims = {"audio": 3, "text": 4, "visual": 2}
    block = fz.create_fusion("tensor", in_dims=dims, out_dim=5).eval()
    block.contract = contract
    assert block.product_dim == 4 * 5 * 3 and block.order == ("visual", "audio", "text")
    x = rand_feats(dims)
    present = {"audio": mask(1, 0, 1, 1, 0, 1)}
    xa = torch.where(present["audio"][:, None], x["audio"], 0.0)
    outer = torch.einsum("bi,bj,bk->bijk", augment(x["visual"]), augment(xa), augment(x["text"])).flatten(1)
    torch.testing.assert_close(block(x, present), outer @ block.weight + block.bias)


def test_tensor_fusion_warns_on_huge_product():
    with pytest.warns(UserWarning, match="consider low_rank"):
        fz.create_fusion("tensor", in_dims={"a": 9, "b": 9}, out_dim=2, max_product_dim=50)


def test_tensor_fusion_picks_the_cheaper_path():
    # Reference dims: the contraction saves memory; tiny widths and a wide output do not.
    assert fz.create_fusion("tensor", in_dims={"audio": 16, "text": 32, "visual": 16}, out_dim=256).contract
    assert not fz.create_fusion("tensor", in_dims={"a": 2, "b": 3}, out_dim=64).contract


def test_low_rank_parameter_count_and_gradients():
    block = fz.create_fusion("low_rank", in_dims=DIMS3, out_dim=8, rank=3)
    expected = sum((d + 1) * 3 * 8 for d in DIMS3.values()) + 3 + 8
    assert sum(p.numel() for p in block.parameters()) == expected
    block(rand_feats(DIMS3)).pow(2).sum().backward()
    for m in DIMS3:
        assert block.factors[m].grad is not None and block.factors[m].grad.abs().sum() > 0


def test_low_rank_equals_its_dense_tensor():
    block = fz.create_fusion("low_rank", in_dims=DIMS3, out_dim=4, rank=6).eval()
    x = rand_feats(DIMS3)
    fa, ft, fv = (block.factors[m] for m in ("audio", "text", "visual"))
    dense = torch.einsum("r,iro,jro,kro->ijko", block.fusion_weights, fa, ft, fv)
    ref = torch.einsum("bi,bj,bk,ijko->bo", augment(x["audio"]), augment(x["text"]), augment(x["visual"]), dense)
    torch.testing.assert_close(block(x), ref + block.fusion_bias, rtol=1e-4, atol=1e-5)


def test_bilinear_mfb_reference():
    block = fz.create_fusion("bilinear", in_dims=DIMS2, out_dim=4, factor=3, eps=0.0).eval()
    x = rand_feats(DIMS2)
    z = (block.proj["audio"](x["audio"]) * block.proj["visual"](x["visual"])).view(6, 4, 3).sum(-1)
    z = torch.sqrt(F.relu(z)) - torch.sqrt(F.relu(-z))
    out = block(x)
    torch.testing.assert_close(out, F.normalize(z, dim=-1))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(6))


# ---------------------------------------------------------------- token blocks


@pytest.mark.parametrize("name", ["transformer", "cross_attention", "bottleneck"])
def test_token_blocks_padding_equals_removing_the_tokens(name):
    dims = {"audio": 6, "text": 10}
    block = fz.create_fusion(name, in_dims=dims, out_dim=4).eval()
    audio, text = torch.randn(1, 5, 6), torch.randn(1, 7, 10)
    padded = {"audio": torch.cat([audio, torch.randn(1, 3, 6)], 1), "text": torch.cat([text, torch.randn(1, 2, 10)], 1)}
    present = {
        "audio": torch.tensor([[True] * 5 + [False] * 3]),
        "text": torch.tensor([[True] * 7 + [False] * 2]),
    }
    torch.testing.assert_close(block(padded, present), block({"audio": audio, "text": text}), rtol=1e-5, atol=1e-6)


def test_cross_attention_grouped_streams_equal_one_stream_at_a_time():
    """The grouped computation (padded tokens, batched weights, one SDPA) against MulT's streams
    computed one by one, unpadded, from each group's slice of the weights."""
    torch.manual_seed(0)
    dims = {"audio": 6, "text": 10, "visual": 8}
    block = fz.create_fusion("cross_attention", in_dims=dims, out_dim=5, hidden_dim=16, depth=2, num_heads=2).eval()
    feats = {"audio": torch.randn(3, 4, 6), "text": torch.randn(3, 7, 10), "visual": torch.randn(3, 2, 8)}
    present = {
        "audio": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool),
        "text": torch.ones(3, 7, dtype=torch.bool),
        "visual": torch.tensor([[1, 0], [0, 0], [1, 1]], dtype=torch.bool),
    }

    def ln(x, norm, g):
        return F.layer_norm(x, x.shape[-1:], norm.weight[g], norm.bias[g], norm.eps)

    def lin(x, layer, g):
        return x @ layer.weight[g] + layer.bias[g]

    def heads(x):
        return x.unflatten(-1, (2, 8)).transpose(1, 2)

    x = {m: block.proj[m](torch.where(present[m][..., None], feats[m], 0.0)) for m in dims}
    pooled = []
    for t in sorted(dims):
        streams = []
        for s in sorted(dims):
            if s == t:
                continue
            g = block.pairs.index((t, s))
            q = x[t]
            ctx = torch.cat([block.null.expand(3, -1, -1), x[s]], dim=1)
            keep = torch.cat([torch.ones(3, 1, dtype=torch.bool), present[s]], dim=1)
            for blk in block.blocks:
                kv = lin(ln(ctx, blk.norm_kv, g), blk.to_kv, g)
                att = F.scaled_dot_product_attention(
                    heads(lin(ln(q, blk.norm_q, g), blk.to_q, g)), heads(kv[..., :16]), heads(kv[..., 16:]), attn_mask=keep[:, None, None, :]
                )
                q = q + lin(att.transpose(1, 2).flatten(2), blk.to_out, g)
                q = q + lin(F.gelu(lin(ln(q, blk.norm2, g), blk.fc1, g)), blk.fc2, g)
            streams.append(q)
        z = torch.cat(streams, dim=-1)
        mean = (z * present[t][..., None]).sum(1) / present[t].sum(1, keepdim=True).clamp(min=1)
        pooled.append(torch.where(present[t].any(1, keepdim=True), mean, block.missing[t]))
    expected = block.out(torch.cat(pooled, dim=-1))
    torch.testing.assert_close(block(feats, present), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer", "cross_attention", "bottleneck"])
def test_token_blocks_accept_pooled_inputs_as_one_token(name):
    dims = {"audio": 6, "text": 10}
    block = fz.create_fusion(name, in_dims=dims, out_dim=4).eval()
    pooled = {"audio": torch.randn(3, 6), "text": torch.randn(3, 10)}
    one_token = {m: x.unsqueeze(1) for m, x in pooled.items()}
    torch.testing.assert_close(block(pooled), block(one_token))
    sample_mask = {"audio": mask(1, 0, 1)}
    torch.testing.assert_close(block(pooled, sample_mask), block(one_token, {"audio": mask(1, 0, 1)[:, None]}))


def test_transformer_token_mask_shape_is_checked():
    block = fz.create_fusion("transformer", in_dims={"audio": 6, "text": 10}, out_dim=4)
    with pytest.raises(ValueError, match=r"present\['audio'\].*\[2, 5\].*\[2, 4\]"):
        block({"audio": torch.randn(2, 5, 6)}, {"audio": torch.ones(2, 4, dtype=torch.bool)})


# ---------------------------------------------------------------- modality dropout


def test_modality_dropout_respects_min_present_and_rate():
    feats = {m: torch.randn(4000, 3) for m in ("audio", "text", "visual")}
    present = {"text": torch.rand(4000) > 0.3}
    drop = ModalityDropout(p=0.5, min_present=1).train()
    out = drop(feats, present, generator=torch.Generator().manual_seed(0))
    before = torch.stack([present["text"], torch.ones(4000, dtype=torch.bool), torch.ones(4000, dtype=torch.bool)], 1)
    after = torch.stack([out["text"], out["audio"], out["visual"]], 1)
    assert not (after & ~before).any(), "dropout must never add a modality"
    assert (after.sum(1) >= 1).all()
    rate = 1 - after.sum() / before.sum()
    assert 0.3 < rate < 0.5  # p = 0.5, minus what min_present puts back
    assert drop.eval()(feats, present)["text"] is present["text"]


def test_modality_dropout_extremes_and_tokens():
    feats = {"audio": torch.randn(8, 4, 3), "visual": torch.randn(8, 2)}
    tok = torch.rand(8, 4) > 0.2
    tok[:, 0] = True
    drop = ModalityDropout(p=1.0, min_present=1).train()
    out = drop(feats, {"audio": tok})
    assert out["audio"].shape == (8, 4) and out["visual"].shape == (8,)
    kept_audio = out["audio"].any(1)
    assert torch.equal(kept_audio ^ out["visual"], torch.ones(8, dtype=torch.bool))  # exactly one kept
    assert not (out["audio"] & ~tok).any()
    assert ModalityDropout(p=1.0, min_present=0).train()(feats)["visual"].sum() == 0
    with pytest.raises(ValueError, match="p must be in"):
        ModalityDropout(p=1.5)
    with pytest.raises(ValueError, match="present\\['text'\\]"):
        drop(feats, {"text": torch.ones(8, dtype=torch.bool)})


def test_modality_dropout_trains_through_a_block():
    block = fz.create_fusion("concat_mlp", in_dims=DIMS3, out_dim=4)
    drop = ModalityDropout(p=0.3).train()
    x = rand_feats(DIMS3, b=16)
    out = block(x, drop(x))
    assert out.shape == (16, 4) and torch.isfinite(out).all()
    assert math.isfinite(out.sum().item())
