"""Registry-wide contract: every registered encoder, head and fusion block, built at its example sizes.

A new entry is tested the moment it registers. Fusion blocks get the full missing-modality contract
of DESIGN.md: any subset, per-sample presence, and results independent of missing slots' values.
"""

import pytest
import torch

import fusionzoo as fz
from fusionzoo.fusion.base import example_features, example_present

ENCODERS = fz.list_encoders()
HEADS = fz.list_heads()
FUSIONS = fz.list_fusions()


def _assert_every_param_has_grad(module, what):
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{what}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{what}: non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"{what}: zero gradient for {name}"


def _loss(out):
    # A random projection rather than .sum(): a sum can be blind to softmax / norm parameters.
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return (out * weight).sum()


# ---------------------------------------------------------------- encoders and heads


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_contract(name):
    enc = fz.ENCODERS.get(name).example().train()
    assert isinstance(enc, fz.Encoder)
    assert isinstance(enc.modality, str) and enc.out_dim > 0
    x = enc.example_input(3)
    out = enc(x)
    assert out.shape == (3, enc.out_dim)
    _loss(out).backward()
    _assert_every_param_has_grad(enc, name)
    if enc.has_tokens:
        tokens, mask = enc.eval().forward_tokens(x)
        assert tokens.shape[0] == 3 and tokens.shape[2] == enc.out_dim
        assert mask is None or (mask.dtype == torch.bool and mask.shape == tokens.shape[:2])


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_same_seed_same_output(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        enc = fz.ENCODERS.get(name).example().eval()
        outs.append(enc(enc.example_input(2)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", HEADS)
def test_head_contract(name):
    head = fz.HEADS.get(name).example()
    x = head.example_input(3).requires_grad_()
    out = head(x)
    assert out.shape == (3, head.out_dim)
    _loss(out).backward()
    _assert_every_param_has_grad(head, name)
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=f"shape \\[B, {head.in_dim}\\]"):
        head(torch.randn(3, head.in_dim + 1))


# ---------------------------------------------------------------- fusion blocks


def _inputs(block, batch=10, token_padding=True, generator=None):
    """Features for every modality and a presence pattern that visits every subset (and token padding)."""
    g = generator or torch.Generator().manual_seed(0)
    feats = example_features(block.in_dims, batch, block.input_kind, generator=g)
    present = example_present(block.modalities, batch)
    if block.input_kind == "tokens" and token_padding:
        tok = {}
        for m, x in feats.items():
            pad = torch.rand(x.shape[:2], generator=g) < 0.3
            pad[:, 0] = False  # keep at least one real token in every present sample
            tok[m] = present[m].unsqueeze(1) & ~pad
        present = tok
    return feats, present


def _fill_missing(feats, present, value):
    out = {}
    for m, x in feats.items():
        mask = present[m]
        fill = torch.randn_like(x) if value == "random" else torch.full_like(x, value)
        out[m] = torch.where(mask.unsqueeze(-1), x, fill)
    return out


def _build(name, **kwargs):
    torch.manual_seed(0)
    return fz.FUSIONS.get(name).example(**kwargs).eval()


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_metadata(name):
    entry = fz.FUSIONS.get(name)
    block = entry.example()
    assert isinstance(block, fz.FusionBlock)
    assert entry.input_kind == block.input_kind in ("pooled", "tokens")
    assert entry.summary, f"{name} has no docstring"
    dims = entry.example_kwargs["in_dims"]
    assert len(dims) >= 2 and len(set(dims.values())) == len(dims), "examples must use unequal per-modality sizes"
    assert block.modalities == tuple(sorted(dims))


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_shape_and_gradients(name):
    block = _build(name).train()
    feats, present = _inputs(block)
    feats = {m: x.requires_grad_() for m, x in feats.items()}
    out = block(feats, present)
    assert out.shape == (10, block.out_dim)
    assert torch.isfinite(out).all()
    _loss(out).backward()
    _assert_every_param_has_grad(block, name)
    for m, x in feats.items():
        sample_present = present[m] if present[m].dim() == 1 else present[m].any(dim=1)
        row_grad = x.grad.flatten(1).abs().sum(dim=1)
        assert (row_grad[sample_present] > 0).all(), f"{name}: a present {m} sample gets no gradient"
        assert (row_grad[~sample_present] == 0).all(), f"{name}: a missing {m} slot gets a gradient"


FAST_PATH_CASES = [
    (name, given)
    for name in FUSIONS
    for given in ("none", "all_true") + (("all_true_tokens",) if fz.FUSIONS.get(name).input_kind == "tokens" else ())
]


@pytest.mark.parametrize(("name", "given"), FAST_PATH_CASES)
def test_fusion_fast_path_equals_masked_path_bit_for_bit(name, given):
    """Nothing missing (``present`` None or all true): the fast path gives the masked path's outputs
    and gradients (to the inputs and every parameter) exactly."""
    block = _build(name).train()
    feats, _ = _inputs(block)
    tokens = given == "all_true_tokens"
    shape = {m: x.shape[:2] if tokens else x.shape[:1] for m, x in feats.items()}
    present = None if given == "none" else {m: torch.ones(shape[m], dtype=torch.bool) for m in feats}
    if not type(block).fast_path:  # not opted in: the masks always come as a dict
        assert isinstance(block.prepare(feats, present)[1], dict)
        return
    assert block.prepare(feats, present)[1] is None
    results = []
    for fast in (True, False):
        block.fast_path = fast
        block.zero_grad(set_to_none=True)
        x = {m: v.clone().requires_grad_() for m, v in feats.items()}
        torch.manual_seed(1)
        out = block(x, present)
        _loss(out).backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in block.parameters()]
        results.append((out.detach(), grads, [x[m].grad for m in sorted(x)]))
    (out_fast, params_fast, inputs_fast), (out_masked, params_masked, inputs_masked) = results
    assert torch.equal(out_fast, out_masked)
    assert all(torch.equal(a, b) for a, b in zip(inputs_fast, inputs_masked))
    assert all(torch.equal(a, b) for a, b in zip(params_fast, params_masked))


@pytest.mark.parametrize("value", ["random", float("nan"), float("inf")], ids=["random", "nan", "inf"])
@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_ignores_values_in_missing_slots(name, value):
    block = _build(name)
    feats, present = _inputs(block)
    with torch.no_grad():
        ref = block(_fill_missing(feats, present, 0.0), present)
        out = block(_fill_missing(feats, present, value), present)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_non_finite_present_value_stays_in_its_row(name, value):
    """The policy for non-finite values in a *present* slot: that sample's output is not finite
    (the problem is visible, never replaced by the nothing-present output), every other row is
    exactly what it was."""
    block = _build(name)
    feats, present = _inputs(block)
    for m in block.modalities:  # sample 0 has every modality
        with torch.no_grad():
            ref = block(feats, present)
            bad = {k: v.clone() for k, v in feats.items()}
            bad[m][0, ..., 0] = value
            out = block(bad, present)
        assert not torch.isfinite(out[0]).all(), f"{name}: a non-finite present {m} value vanished from its row"
        torch.testing.assert_close(out[1:], ref[1:], rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_nothing_present_is_finite_and_learned(name):
    block = _build(name)
    feats, _ = _inputs(block, batch=3)
    nothing = {m: torch.zeros(3, dtype=torch.bool) for m in block.modalities}
    with torch.no_grad():
        out = block(feats, nothing)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[1])  # independent of the (ignored) inputs


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_absent_key_equals_marked_missing(name):
    block = _build(name)
    feats, present = _inputs(block, token_padding=False)
    drop = block.modalities[0]
    kept = {m: x for m, x in feats.items() if m != drop}
    kept_present = {m: p for m, p in present.items() if m != drop}
    marked = dict(present)
    marked[drop] = torch.zeros_like(present[drop])
    with torch.no_grad():
        torch.testing.assert_close(block(kept, kept_present), block(feats, marked))


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_runs_on_every_subset(name):
    block = _build(name)
    feats, _ = _inputs(block, token_padding=False)
    for i in range(1, len(block.modalities) + 1):
        subset = {m: feats[m] for m in block.modalities[:i]}
        assert block(subset).shape == (10, block.out_dim)


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_key_order_does_not_matter(name):
    block = _build(name)
    feats, present = _inputs(block)
    rev_feats = dict(reversed(list(feats.items())))
    rev_present = dict(reversed(list(present.items())))
    with torch.no_grad():
        torch.testing.assert_close(block(feats, present), block(rev_feats, rev_present), rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_same_seed_same_output(name):
    a, b = _build(name), _build(name)
    feats, present = _inputs(a)
    with torch.no_grad():
        torch.testing.assert_close(a(feats, present), b(feats, present), rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_rejects_bad_inputs(name):
    block = _build(name)
    feats, _ = _inputs(block, token_padding=False)
    m = block.modalities[0]
    d = block.in_dims[m]
    wrong = dict(feats)
    wrong[m] = torch.randn(*feats[m].shape[:-1], d + 1)
    with pytest.raises(ValueError, match=rf"{m}.*{d}\]"):
        block(wrong)
    with pytest.raises(ValueError, match="'depth'"):
        block({**feats, "depth": feats[m]})
    with pytest.raises(ValueError, match="features is empty"):
        block({})
    with pytest.raises(TypeError, match=f"{m}.*bool"):
        block(feats, {m: torch.ones(10)})
    bad_ints = dict(feats)
    bad_ints[m] = feats[m].long()
    with pytest.raises(TypeError, match=f"{m}.*float"):
        block(bad_ints)
    with pytest.raises(ValueError, match="batch size"):
        block({**feats, block.modalities[1]: feats[block.modalities[1]][:3]})


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_rejects_bad_in_dims(name):
    entry = fz.FUSIONS.get(name)
    dims = dict(entry.example_kwargs["in_dims"])
    with pytest.raises(ValueError, match="in_dims is empty"):
        entry.example(in_dims={})
    m = sorted(dims)[0]
    with pytest.raises(ValueError, match=f"in_dims\\['{m}'\\] must be positive"):
        entry.example(in_dims={**dims, m: 0})
    with pytest.raises(ValueError, match="out_dim must be positive"):
        entry.example(out_dim=0)


@pytest.mark.compile
@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_compile_matches_eager(name):
    block = _build(name)
    feats, present = _inputs(block)
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(feats, present), block(feats, present))


@pytest.mark.compile
@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_exports(name):
    block = _build(name)
    feats, present = _inputs(block)
    exported = torch.export.export(block, (feats, present))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(feats, present), block(feats, present))
