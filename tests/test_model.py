import pytest
import torch

import fusionzoo as fz


def make(fusion="concat_mlp"):
    encoders = {
        "audio": fz.create_encoder("feature_mlp", in_dim=10, out_dim=6, modality="audio"),
        "visual": fz.create_encoder("feature_mlp", in_dim=12, out_dim=8, modality="visual"),
    }
    fusion = fz.create_fusion(fusion, in_dims={"audio": 6, "visual": 8}, out_dim=5)
    head = fz.create_head("linear", in_dim=5, out_dim=3)
    return fz.MultimodalModel(encoders=encoders, fusion=fusion, head=head).eval()


def test_forward_on_any_subset_and_with_present():
    model = make()
    batch = {"audio": torch.randn(4, 10), "visual": torch.randn(4, 12), "label": torch.zeros(4)}
    assert model(batch).shape == (4, 3)
    assert model({"audio": batch["audio"]}).shape == (4, 3)
    present = {"visual": torch.tensor([True, False, True, True])}
    out = model({**batch, "present": present})
    nan_batch = {**batch, "visual": batch["visual"].clone(), "present": present}
    nan_batch["visual"][1] = float("nan")
    torch.testing.assert_close(model(nan_batch), out)


def test_batch_without_any_modality_raises():
    with pytest.raises(ValueError, match="none of the model's modalities"):
        make()({"text": torch.randn(2, 3)})


def test_size_mismatch_is_caught_at_construction():
    enc = {"audio": fz.create_encoder("feature_mlp", in_dim=4, out_dim=7)}
    fusion = fz.create_fusion("concat_mlp", in_dims={"audio": 6}, out_dim=5)
    with pytest.raises(ValueError, match=r"audio: encoder out_dim is 7 but the fusion block expects in_dims\['audio'\] = 6"):
        fz.MultimodalModel(encoders=enc, fusion=fusion, head=fz.create_head("linear", in_dim=5, out_dim=2))
    enc = {"audio": fz.create_encoder("feature_mlp", in_dim=4, out_dim=6)}
    with pytest.raises(ValueError, match="head in_dim is 4"):
        fz.MultimodalModel(encoders=enc, fusion=fusion, head=fz.create_head("linear", in_dim=4, out_dim=2))
    with pytest.raises(ValueError, match="encoders are given for"):
        fz.MultimodalModel(encoders={}, fusion=fusion, head=fz.create_head("linear", in_dim=5, out_dim=2))


def test_num_params_adds_up():
    counts = make().num_params()
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_encoder_rejects_bad_input():
    enc = fz.create_encoder("feature_mlp", in_dim=10, out_dim=4, modality="audio")
    with pytest.raises(ValueError, match=r"audio: expected input to be a float tensor of shape \[B, 10\], got float32 tensor of shape \[2, 9\]"):
        enc(torch.randn(2, 9))
    with pytest.raises(TypeError, match="audio.*got int64"):
        enc(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty batch"):
        enc(torch.randn(0, 10))
