"""Property-based fuzzing of every registered fusion block (Hypothesis).

Random widths, batch sizes from 1, modality subsets, per-sample masks (token padding included) and
non-finite values in missing and present slots; the contract must hold for every draw:

* values in missing slots never matter (NaN and inf included);
* a non-finite value in a present slot stays in its sample's row;
* a sample with nothing present gets a finite output;
* gradients are finite when the inputs are.

``FUSIONZOO_HYPOTHESIS=nightly`` runs many more examples (the default keeps the suite fast).
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusionzoo as fz

settings.register_profile("ci", max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.register_profile("nightly", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FUSIONZOO_HYPOTHESIS", "ci"))

FUSIONS = fz.list_fusions()
ALL = ("audio", "text", "visual")


@st.composite
def cases(draw, name):
    entry = fz.FUSIONS.get(name)
    k = entry.num_modalities or draw(st.integers(2, 3))
    mods = sorted(draw(st.permutations(ALL))[:k])
    in_dims = {m: draw(st.integers(1, 24)) for m in mods}
    kwargs = {**entry.example_kwargs, "in_dims": in_dims, **{arg: mods[-1] for arg in entry.role_args}}
    batch = draw(st.integers(1, 6))
    given_mods = draw(st.lists(st.sampled_from(mods), min_size=1, max_size=len(mods), unique=True))
    masks = {m: draw(st.lists(st.booleans(), min_size=batch, max_size=batch)) for m in given_mods}
    seed = draw(st.integers(0, 2**16))
    return kwargs, batch, masks, seed


def _inputs(block, batch, masks, seed):
    g = torch.Generator().manual_seed(seed)
    feats, present = {}, {}
    for m, flags in masks.items():
        mask = torch.tensor(flags)
        if block.input_kind == "tokens":
            n = 1 + seed % 4
            feats[m] = torch.randn(batch, n, block.in_dims[m], generator=g)
            tokens = torch.rand(batch, n, generator=g) < 0.7
            tokens[:, 0] = True
            present[m] = mask[:, None] & tokens
        else:
            feats[m] = torch.randn(batch, block.in_dims[m], generator=g)
            present[m] = mask
    return feats, present


def _sample_present(p):
    return p if p.dim() == 1 else p.any(dim=1)


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_contract_holds_for_random_inputs(name):
    @given(case=cases(name), fill=st.sampled_from([float("nan"), float("inf"), -1e30]))
    def check(case, fill):
        kwargs, batch, masks, seed = case
        torch.manual_seed(seed)
        block = fz.FUSIONS.get(name).build(**kwargs).eval()
        feats, present = _inputs(block, batch, masks, seed)
        feats = {m: x.requires_grad_() for m, x in feats.items()}
        out = block(feats, present)
        assert out.shape == (batch, block.out_dim)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)
        with torch.no_grad():
            dirty = {m: torch.where(present[m].unsqueeze(-1), x, fill) for m, x in feats.items()}
            torch.testing.assert_close(block(dirty, present), out.detach(), rtol=0, atol=0)  # missing slots never matter
            anything = torch.stack([_sample_present(p) for p in present.values()]).any(dim=0)
            if anything.any():
                row = int(anything.nonzero()[0])
                m = next(m for m, p in present.items() if _sample_present(p)[row])
                bad = {k: v.detach().clone() for k, v in feats.items()}
                where = (row, 0) if bad[m].dim() == 3 else (row,)
                bad[m][where + (0,)] = float("nan")
                poisoned = block(bad, present)
                assert not torch.isfinite(poisoned[row]).all()
                others = torch.arange(batch) != row
                torch.testing.assert_close(poisoned[others], out.detach()[others], rtol=0, atol=0)

    check()
