import pytest
import torch

from fusionzoo.layers import (
    MLP,
    check_dims,
    check_tensor,
    masked_max,
    masked_mean,
    masked_softmax,
    zero_missing,
)


def test_zero_missing_removes_nan():
    x = torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]])
    out = zero_missing(x, torch.tensor([True, False]))
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))


def test_masked_mean_and_max_match_reference():
    x = torch.randn(3, 5, 4)
    mask = torch.rand(3, 5) > 0.4
    mask[2] = False
    mean = masked_mean(x, mask, dim=1)
    mx = masked_max(x, mask, dim=1)
    for b in range(2):
        if mask[b].any():
            torch.testing.assert_close(mean[b], x[b][mask[b]].mean(0))
            torch.testing.assert_close(mx[b], x[b][mask[b]].amax(0))
    assert torch.equal(mean[2], torch.zeros(4)) and torch.equal(mx[2], torch.zeros(4))
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), mean)


def test_masked_softmax_sums_to_one_over_present_and_zero_when_none():
    scores = torch.randn(4, 3)
    mask = torch.tensor([[True, True, True], [True, False, True], [False, False, True], [False, False, False]])
    w = masked_softmax(scores, mask)
    torch.testing.assert_close(w[:3].sum(-1), torch.ones(3))
    assert (w[~mask] == 0).all() and torch.equal(w[3], torch.zeros(3))


def test_check_tensor_messages():
    with pytest.raises(TypeError, match="text: expected input to be a int tensor"):
        check_tensor(torch.randn(2, 3), name="text", shape=("B", "L"), dtype="int")
    with pytest.raises(ValueError, match=r"visual: expected input to be a float tensor of shape \[B, 3, H, W\], got float32 tensor of shape \[2, 1, 8, 8\]"):
        check_tensor(torch.randn(2, 1, 8, 8), name="visual", shape=("B", 3, "H", "W"))
    with pytest.raises(TypeError, match="got list"):
        check_tensor([1, 2], name="audio", shape=("B",))


def test_check_dims():
    assert list(check_dims({"b": 2, "a": 1}, where="X")) == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        check_dims({}, where="X")
    with pytest.raises(TypeError, match="must be an int"):
        check_dims({"a": 2.0}, where="X")
    with pytest.raises(TypeError, match="without '.'"):
        check_dims({"a.b": 2}, where="X")


def test_mlp_layers():
    mlp = MLP(4, [8, 6], 3, norm=True, dropout=0.1)
    assert mlp(torch.randn(2, 4)).shape == (2, 3)
    assert isinstance(MLP(4, [], 3)[0], torch.nn.Linear) and len(MLP(4, [], 3)) == 1
    with pytest.raises(ValueError, match="hidden_dims"):
        MLP(4, [0], 3)
