import pytest
import torch
from torch import nn

import fusionzoo as fz
from fusionzoo.registry import Registry


@pytest.fixture
def reg():
    return Registry("thing")


def test_create_uses_only_the_callers_kwargs_and_example_uses_the_examples(reg):
    @reg.register("lin", example_kwargs={"in_dim": 3, "out_dim": 4}, modality="visual", paper="https://x", tags=("a",))
    class Lin(nn.Linear):
        """A linear thing."""

        def __init__(self, *, in_dim: int, out_dim: int = 10, bias: bool = True):
            super().__init__(in_dim, out_dim, bias=bias)

    m = reg.create("lin", in_dim=5)
    assert (m.in_features, m.out_features) == (5, 10)  # the constructor's default, not the example's 4
    with pytest.raises(TypeError, match=r"thing 'lin': missing required argument in_dim \(for example in_dim=3\)"):
        reg.create("lin")
    m = reg.get("lin").example(out_dim=7, bias=False)
    assert (m.in_features, m.out_features, m.bias) == (3, 7, None)
    entry = reg.get("lin")
    assert entry.modality == "visual" and entry.paper == "https://x" and entry.tags == ("a",)
    assert entry.summary == "A linear thing."
    assert entry.module.endswith("Lin")
    info = entry.describe()
    assert info["num_params"] == 3 * 4 + 4 and info["example_kwargs"] == {"in_dim": 3, "out_dim": 4}


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


def test_bad_examples_rejected_at_registration(reg):
    with pytest.raises(TypeError, match="unknown argument"):

        @reg.register("x", example_kwargs={"nope": 1})
        def x(*, a: int = 1):
            return a


def test_input_kind_is_read_from_the_class_and_checked(reg):
    class Seq:
        input_kind = "sequence"

    with pytest.raises(ValueError, match="input_kind must be one of"):
        reg.register("x")(Seq)
    assert fz.FUSIONS.get("transformer").input_kind == "tokens" == fz.fusion.TransformerFusion.input_kind
    assert fz.FUSIONS.get("concat_mlp").input_kind == "pooled"


def test_real_defaults_and_required_in_dims():
    assert fz.create_encoder("resnet18").out_dim == 512
    lstm = fz.create_encoder("text_lstm")
    assert lstm.vocab_size == 30_000 and lstm.out_dim == 256
    with pytest.raises(TypeError, match="missing required argument in_dims"):
        fz.create_fusion("concat_mlp", out_dim=8)
    with pytest.raises(TypeError, match="missing required argument out_dim"):
        fz.create_fusion("concat_mlp", in_dims={"audio": 4})
    assert fz.create_fusion("weighted_late", in_dims={"a": 2, "b": 3}, out_dim=4).weighting == "learned"
    assert len(fz.create_dataset("synthetic")) == 2000


def test_entry_fit_handles_roles_and_fixed_modality_counts():
    dims = {"audio": 4, "text": 5, "visual": 6}
    assert fz.FUSIONS.get("film").fit(dims) == {"in_dims": dims, "target": "visual"}
    assert fz.FUSIONS.get("bilinear").fit(dims) == {"in_dims": {"text": 5, "visual": 6}}
    assert fz.FUSIONS.get("concat_mlp").fit(dims) == {"in_dims": dims}


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
    kinds = {"encoder": "encoders", "fusion": "fusions", "head": "heads", "model": "models", "dataset": "datasets", "loss": "losses", "optimizer": "optimizers"}
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
    assert set(info["example_input_shape"]) == set(info["example_kwargs"]["in_dims"])


def test_user_registered_block_is_buildable():
    @fz.register_fusion("test_sum_fusion", example_kwargs={"in_dims": {"a": 3, "b": 3}, "out_dim": 3})
    class SumFusion(fz.FusionBlock):
        """Sum of present features."""

        def __init__(self, *, in_dims, out_dim):
            super().__init__(in_dims=in_dims, out_dim=out_dim)

        def forward(self, features, present=None):
            features, present = self.prepare(features, present)
            return sum(features[m] for m in self.modalities)

    try:
        block = fz.FUSIONS.get("test_sum_fusion").example()
        out = block({"a": torch.ones(2, 3)})
        assert torch.equal(out, torch.ones(2, 3))
    finally:
        fz.FUSIONS.unregister("test_sum_fusion")


@pytest.mark.parametrize("kind", sorted(fz.registry.REGISTRIES))
def test_every_entry_has_a_docstring(kind):
    registry = fz.registry.REGISTRIES[kind]
    for name in registry.list():
        assert registry.get(name).summary, f"{kind} {name!r} has no docstring"
