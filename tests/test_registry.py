import pytest
import torch
from torch import nn

import fusionzoo as fz
from fusionzoo.registry import Registry


@pytest.fixture
def reg():
    return Registry("thing")


def test_register_create_merges_defaults(reg):
    @reg.register("lin", defaults={"in_dim": 3, "out_dim": 4}, modality="visual", paper="https://x", tags=("a",))
    class Lin(nn.Linear):
        """A linear thing."""

        def __init__(self, *, in_dim: int, out_dim: int, bias: bool = True):
            super().__init__(in_dim, out_dim, bias=bias)

    m = reg.create("lin")
    assert (m.in_features, m.out_features) == (3, 4)
    m = reg.create("lin", out_dim=7, bias=False)
    assert (m.in_features, m.out_features, m.bias) == (3, 7, None)
    entry = reg.get("lin")
    assert entry.modality == "visual" and entry.paper == "https://x" and entry.tags == ("a",)
    assert entry.summary == "A linear thing."
    assert entry.module.endswith("Lin")
    info = entry.describe()
    assert info["num_params"] == 3 * 4 + 4 and info["defaults"] == {"in_dim": 3, "out_dim": 4}


def test_duplicate_name_raises_naming_both_modules(reg):
    @reg.register("a")
    def first():
        return 1

    with pytest.raises(ValueError, match=r"'a' is already registered by .*first.*second"):

        @reg.register("a")
        def second():
            return 2


def test_public_duplicate_fusion_raises():
    with pytest.raises(ValueError, match="concat_mlp"):
        fz.register_fusion("concat_mlp")(lambda **kw: None)


def test_unknown_name_suggests_closest():
    with pytest.raises(KeyError, match="did you mean 'concat_mlp'"):
        fz.create_fusion("concat_mpl", in_dims={"a": 2}, out_dim=2)


def test_unknown_kwarg_suggests_closest():
    with pytest.raises(TypeError, match="hidden_dimz: unknown argument; did you mean hidden_dims"):
        fz.create_fusion("concat_mlp", hidden_dimz=[4])


def test_bad_defaults_rejected_at_registration(reg):
    with pytest.raises(TypeError, match="unknown argument"):

        @reg.register("x", defaults={"nope": 1})
        def x(*, a: int = 1):
            return a


def test_bad_input_kind_rejected(reg):
    with pytest.raises(ValueError, match="input_kind"):
        reg.register("x", input_kind="sequence")


def test_list_sorted_with_pattern(reg):
    for name in ["zeta", "alpha_attention", "beta", "gamma_attention"]:
        reg.register(name, tags=("t",) if "a_" in name else ())(lambda: None)
    assert reg.list() == ["alpha_attention", "beta", "gamma_attention", "zeta"]
    assert reg.list("*attention") == ["alpha_attention", "gamma_attention"]
    assert reg.list(tag="t") == ["alpha_attention", "gamma_attention"]
    assert "beta" in reg and len(reg) == 4 and list(reg) == reg.list()
    reg.unregister("beta")
    assert "beta" not in reg


def test_public_face_has_every_kind():
    kinds = {"encoder": "encoders", "fusion": "fusions", "head": "heads", "model": "models", "dataset": "datasets", "loss": "losses"}
    for kind, plural in kinds.items():
        for fn in (f"create_{kind}", f"list_{plural}", f"register_{kind}", f"get_{kind}_info"):
            assert callable(getattr(fz, fn)), fn
    assert isinstance(fz.__version__, str)
    namespace = {}
    exec("from fusionzoo import *", namespace)
    assert set(fz.__all__) <= set(namespace)
    assert fz.list_fusions() == sorted(fz.list_fusions())


def test_get_info_reports_metadata():
    info = fz.get_fusion_info("concat_mlp")
    assert info["input_kind"] == "pooled"
    assert info["num_params"] > 0
    assert set(info["example_input_shape"]) == set(info["defaults"]["in_dims"])


def test_user_registered_block_is_buildable():
    @fz.register_fusion("test_sum_fusion", defaults={"in_dims": {"a": 3, "b": 3}, "out_dim": 3}, input_kind="pooled")
    class SumFusion(fz.FusionBlock):
        """Sum of present features."""

        def __init__(self, *, in_dims, out_dim):
            super().__init__(in_dims=in_dims, out_dim=out_dim)

        def forward(self, features, present=None):
            features, present = self.prepare(features, present)
            return sum(features[m] for m in self.modalities)

    try:
        block = fz.create_fusion("test_sum_fusion")
        out = block({"a": torch.ones(2, 3)})
        assert torch.equal(out, torch.ones(2, 3))
    finally:
        fz.FUSIONS.unregister("test_sum_fusion")


@pytest.mark.parametrize("kind", sorted(fz.registry.REGISTRIES))
def test_every_entry_has_a_docstring(kind):
    registry = fz.registry.REGISTRIES[kind]
    for name in registry.list():
        assert registry.get(name).summary, f"{kind} {name!r} has no docstring"
