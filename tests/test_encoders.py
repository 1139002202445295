"""Encoder behaviour beyond the registry-wide contract: sizes, padding, weights files, bad input."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import fusionzoo as fz
from fusionzoo.vocab import Vocab, tokenize
from fusionzoo.config import check_model_fits_data, load_config
from fusionzoo.encoders import BACKBONES, TorchvisionBackbone
from fusionzoo.encoders.visual import IMAGENET_MEAN, IMAGENET_STD

# ---------------------------------------------------------------- visual


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (64, 48)])
def test_visual_cnn_any_size_from_16(size):
    enc = fz.create_encoder("visual_cnn", in_channels=1, channels=[4, 8, 8], out_dim=5).eval()
    x = torch.randn(2, 1, *size)
    assert enc(x).shape == (2, 5)
    tokens, mask = enc.forward_tokens(x)
    assert tokens.shape == (2, (size[0] // 4) * (size[1] // 4), 5) and mask is None
    torch.testing.assert_close(enc.forward_head(enc.forward_features(x)), enc(x))
    assert enc.forward_head(enc.forward_features(x), pre_logits=True).shape == (2, 8)


def test_visual_cnn_rejects_bad_input():
    enc = fz.create_encoder("visual_cnn", in_channels=3)
    with pytest.raises(ValueError, match=r"visual: expected input to be a float tensor of shape \[B, 3, H, W\], got float32 tensor of shape \[2, 1, 32, 32\]"):
        enc(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        enc(torch.randn(2, 3, 15, 32))
    with pytest.raises(TypeError, match="visual.*got uint8"):
        enc(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-empty batch"):
        enc(torch.randn(0, 3, 32, 32))
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        fz.create_encoder("visual_cnn", in_channels=2)


def test_lenet_is_multibench_shaped():
    enc = fz.create_encoder("lenet", in_channels=1, channels=6, additional_layers=3, out_dim=None).eval()
    assert enc.out_dim == 48
    assert enc(torch.randn(3, 1, 28, 28)).shape == (3, 48)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3), (3, 3)]
    assert [c.out_channels for c in convs] == [6, 12, 24, 48]


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_backbone_native_width_and_projection(arch):
    enc = fz.create_encoder(arch, out_dim=None).eval()
    assert enc.out_dim == BACKBONES[arch][1]
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, enc.out_dim)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_backbone_saved_and_reloaded_from_a_path_is_identical(tmp_path, suffix):
    torch.manual_seed(1)
    enc = fz.create_encoder("resnet18", out_dim=8).eval()
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    torch.manual_seed(2)
    again = fz.create_encoder("resnet18", out_dim=8, weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), enc(x), rtol=0, atol=0)
    assert again.load_report is not None and not again.load_report.missing


def test_backbone_loads_torchvision_keys_and_adapts_one_channel(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    rgb = TorchvisionBackbone(arch="resnet18", out_dim=None, weights=path).eval()
    grey = TorchvisionBackbone(arch="resnet18", out_dim=None, in_channels=1, weights=path).eval()
    assert set(rgb.load_report.unexpected) == set()  # the classifier's keys were dropped on purpose
    assert grey.trunk.conv1.weight.shape[1] == 1
    x = torch.randn(2, 1, 40, 40)
    # Summing the kernels over RGB: a grey image gives what the same image in colour gives.
    torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_backbone_named_weights_use_torchvision_without_network(monkeypatch):
    torch.manual_seed(3)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    calls = []

    def fake_get_state_dict(self, progress=True, **kwargs):
        calls.append((self.name, progress))
        return state

    monkeypatch.setattr(torchvision.models.MobileNet_V3_Small_Weights, "get_state_dict", fake_get_state_dict)
    enc = fz.create_encoder("mobilenet_v3_small", weights="IMAGENET1K_V1", progress=False, out_dim=None)
    assert calls == [("IMAGENET1K_V1", False)]
    torch.testing.assert_close(enc.trunk.features[0][0].weight, state["features.0.0.weight"])


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        fz.create_encoder("resnet18", weights="IMAGENET9K")
    with pytest.raises(FileNotFoundError):
        fz.create_encoder("resnet18", weights=str(tmp_path / "missing.pt"))
    path = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"do not match resnet18 \(0 trunk tensors missing, 96 unexpected\)"):
        fz.create_encoder("resnet18", weights=str(path))
    path = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        fz.create_encoder("resnet18", weights=str(path))


# ---------------------------------------------------------------- audio


def test_audio_spec_cnn_acceptance():
    enc = fz.create_encoder("audio_spec_cnn", out_dim=128)
    assert enc(torch.randn(4, 16000)).shape == (4, 128)
    tokens, mask = enc.forward_tokens(torch.randn(4, 16000))
    assert tokens.shape[0] == 4 and tokens.shape[2] == 128 and mask.shape == tokens.shape[:2] and mask.all()
    assert enc(torch.randn(4, 1, 16000)).shape == (4, 128)


@pytest.mark.parametrize("name", ["audio_spec_cnn", "audio_resnet18"])
def test_audio_padding_with_lengths_matches_unpadded(name):
    enc = fz.ENCODERS.get(name).example(sample_rate=8000).eval()
    lengths = torch.tensor([4000, 2600, 3100])
    waves = [torch.randn(int(n)) for n in lengths]
    padded = torch.zeros(3, 5000)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
    padded[1, 2600:] = torch.randn(2400)  # junk in the padding must not matter either
    out = enc(padded, lengths=lengths)
    tokens, mask = enc.forward_tokens(padded, lengths=lengths)
    frames = (lengths - enc.frontend.n_fft) // enc.frontend.hop_length + 1
    if name == "audio_spec_cnn":
        frames = frames // 2  # one 2x2 max-pool between the example's two stages
    else:
        for _ in range(5):
            frames = (frames + 1) // 2
    assert torch.equal(mask.sum(1), frames) and tokens.shape[:2] == mask.shape
    if name == "audio_spec_cnn":  # exact: the CNN re-zeroes padded frames after every block
        for i, w in enumerate(waves):
            torch.testing.assert_close(out[i], enc(w[None])[0], rtol=1e-4, atol=1e-5)
    else:  # pooling ignores padded frames; the trunk's receptive field still sees a few
        assert torch.isfinite(out).all()


def _rezero_every_block(enc, spec, frames):
    """The masked CNN as first written: padded frames zeroed after every block and every pool."""
    def zero(x, n):
        return torch.where(torch.arange(x.shape[-1]) < n[:, None, None, None], x, 0.0)

    x = spec
    for i, block in enumerate(enc.blocks):
        if i > 0:
            x, frames = enc.pool(x), frames // 2
            x = zero(x, frames)
        x = zero(block(x), frames)
    return x


@pytest.mark.parametrize("channels_last", [False, True])
def test_audio_spec_cnn_masks_once_per_stage_exactly(channels_last):
    """Zeroing the padding once per stage (after the pool) is the per-block re-zeroing, bit for bit,
    in training mode (batch statistics) and for odd frame counts at every stage."""
    torch.manual_seed(0)
    enc = fz.create_encoder("audio_spec_cnn", sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                            channels=(4, 8, 8), out_dim=8, channels_last=channels_last).train()
    spec = torch.randn(5, 1, 16, 37)
    frames = torch.tensor([37, 35, 23, 9, 4])  # odd and even at every stage
    results = []
    for fn in (lambda: _rezero_every_block(enc, spec.contiguous(memory_format=enc.memory_format), frames),
               lambda: enc.forward_features(spec, frames)[0]):
        enc.zero_grad()
        out = fn()
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in enc.blocks.parameters()]))
    (ref, ref_grads), (out, out_grads) = results
    assert torch.equal(out, ref) and torch.equal(enc.forward_features(spec, frames)[1], frames // 4)
    assert all(torch.equal(a, b) for a, b in zip(out_grads, ref_grads))


def test_audio_without_lengths_skips_masking_with_the_same_result():
    torch.manual_seed(0)
    enc = fz.create_encoder("audio_spec_cnn", sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                            channels=(4, 8, 8), out_dim=8).train()
    wave = torch.randn(3, 4000)
    full = torch.full((3,), 4000)
    torch.manual_seed(1)
    a = enc(wave)
    torch.manual_seed(1)
    b = enc(wave, lengths=full)
    assert torch.equal(a, b)
    tokens, mask = enc.forward_tokens(wave)
    assert mask.all() and mask.shape == tokens.shape[:2]


def test_audio_spec_cnn_padding_invariance_three_stages():
    enc = fz.create_encoder("audio_spec_cnn", sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                            channels=(4, 8, 8), out_dim=8).eval()
    lengths = torch.tensor([6000, 2600, 4700, 1800])
    padded = torch.randn(4, 6000)  # junk in the padding
    out = enc(padded, lengths=lengths)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i], enc(padded[i : i + 1, :n])[0], rtol=1e-4, atol=1e-5)


def test_lenet_pool_before_relu_is_multibench_order_bit_for_bit():
    """conv-BN-pool-ReLU computes conv-BN-ReLU-pool's outputs and gradients exactly."""
    torch.manual_seed(0)
    enc = fz.create_encoder("lenet", channels=6, additional_layers=3, out_dim=8).train()
    x = torch.randn(8, 1, 28, 28)

    def multibench_order(x):
        layers = list(enc.features)
        for i in range(0, len(layers), 4):
            conv, norm, pool, relu = layers[i : i + 4]
            x = pool(relu(norm(conv(x))))
        return enc.proj(x.mean(dim=(2, 3)))

    grads = []
    for fn in (enc, multibench_order):
        enc.zero_grad()
        out = fn(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in enc.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_front_end_power_spectrum_matches_torchaudio():
    from fusionzoo.encoders.audio import LogMelFrontEnd

    fe = LogMelFrontEnd(sample_rate=8000, n_fft=256, hop_length=128, n_mels=40)
    wave = torch.randn(4, 5000)
    torch.testing.assert_close(fe.mel_power(wave), fe.mel(wave), rtol=1e-5, atol=1e-6)


def test_spec_augment_changes_output_only_in_training():
    torch.manual_seed(0)
    aug = fz.create_encoder("audio_spec_cnn", freq_mask=8, time_mask=10, norm="group")
    plain = fz.create_encoder("audio_spec_cnn", norm="group")
    plain.load_state_dict(aug.state_dict())
    x = torch.randn(3, 6000)
    aug.eval(), plain.eval()
    torch.testing.assert_close(aug(x), plain(x))
    aug.train(), plain.train()
    torch.manual_seed(1)
    a = aug(x)
    torch.testing.assert_close(plain(x), plain(x))  # no randomness without SpecAugment
    assert not torch.allclose(a, plain(x))


def test_audio_front_end_follows_module_dtype():
    enc = fz.create_encoder("audio_spec_cnn").double().eval()
    out = enc(torch.randn(2, 4000, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert enc.frontend.mel.mel_scale.fb.dtype == torch.float64


def test_audio_spectrogram_input():
    enc = fz.create_encoder("audio_spec_cnn", input="spectrogram", n_mels=32).eval()
    spec = torch.randn(2, 1, 32, 40)
    assert enc(spec).shape == (2, enc.out_dim)
    with pytest.raises(ValueError, match=r"audio: expected spectrogram to be a float tensor of shape \[B, 1, 32, T\]"):
        enc(torch.randn(2, 1, 20, 40))


def test_audio_rejects_bad_input():
    enc = fz.create_encoder("audio_spec_cnn")
    with pytest.raises(ValueError, match=r"audio: expected waveform to be a float tensor of shape \[B, T\], got float32 tensor of shape \[2, 2, 100\]"):
        enc(torch.randn(2, 2, 100))
    with pytest.raises(TypeError, match="audio.*got int16"):
        enc(torch.zeros(2, 4000, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"needs at least \d+ samples per clip, got 100"):
        enc(torch.randn(2, 100))
    with pytest.raises(TypeError, match="lengths"):
        enc(torch.randn(2, 4000), lengths=torch.tensor([1.0, 2.0]))


def test_model_passes_audio_lengths():
    cfg = {
        "model": {
            "encoders": {"audio": {"name": "audio_spec_cnn", "out_dim": 8}, "text": {"name": "text_embedding", "vocab_size": 50, "out_dim": 6}},
            "fusion": {"name": "concat_mlp", "out_dim": 5},
            "head": {"name": "linear", "out_dim": 3},
        }
    }
    model = fz.build_model(cfg).eval()
    wave = torch.randn(2, 4000)
    padded = torch.cat([wave, torch.randn(2, 1000)], dim=1)
    text = torch.tensor([[3, 4, 0], [5, 0, 0]])
    a = model({"audio": wave, "text": text})
    b = model({"audio": padded, "audio_lengths": torch.tensor([4000, 4000]), "text": text})
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- text


def test_vocab_build_encode_decode_save_load(tmp_path):
    texts = ["A red circle.", "a blue square", "a red square!"]
    vocab = Vocab.build(texts, min_freq=1)
    assert vocab.itos == ["<pad>", "<unk>", "a", "red", "square", "!", ".", "blue", "circle"]
    ids = vocab.encode(["a red triangle", "square"])
    assert ids.dtype == torch.long and ids.shape == (2, 3)
    assert ids[0, 2].item() == 1 and ids[1, 1:].tolist() == [0, 0]
    assert vocab.decode(ids[1]) == "square"
    assert vocab.encode(["a red square"], max_length=2).tolist() == [[2, 3]]
    assert Vocab.build(texts, min_freq=2).itos == ["<pad>", "<unk>", "a", "red", "square"]
    assert len(Vocab.build(texts, max_size=4)) == 4
    path = tmp_path / "v" / "vocab.json"
    vocab.save(path)
    assert Vocab.load(path).itos == vocab.itos
    assert tokenize("Don't stop!") == ["don't", "stop", "!"]
    assert vocab.encode([""]).shape == (1, 1)


def _pad(ids, extra):
    return torch.cat([ids, torch.zeros(ids.shape[0], extra, dtype=torch.long)], dim=1)


def test_text_lstm_padded_equals_unpadded():
    enc = fz.create_encoder("text_lstm", vocab_size=1000, out_dim=64).eval()
    rows = [torch.randint(2, 1000, (n,)) for n in (7, 3, 5)]
    batch = torch.zeros(3, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = r
    out = enc(batch)
    for i, r in enumerate(rows):
        torch.testing.assert_close(out[i], enc(r[None])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("text_embedding", {}),
        ("text_lstm", {"pooling": "last"}),
        ("text_lstm", {"pooling": "mean", "rnn": "gru"}),
        ("text_lstm", {"pooling": "max", "bidirectional": False}),
        ("text_transformer", {"pooling": "mean"}),
        ("text_transformer", {"pooling": "cls", "positions": "sinusoidal"}),
    ],
)
def test_text_padding_invariance_and_empty_rows(name, kwargs):
    enc = fz.create_encoder(name, **kwargs).eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [0, 0, 0, 0]])
    out = enc(ids)
    torch.testing.assert_close(enc(_pad(ids, 3)), out, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[2], torch.zeros(enc.out_dim))
    tokens, mask = enc.forward_tokens(ids)
    assert tokens.shape == (3, 4, enc.out_dim) and torch.equal(mask, ids != 0)
    assert torch.isfinite(tokens).all()


def test_text_rejects_bad_input():
    enc = fz.create_encoder("text_transformer", max_length=8)
    with pytest.raises(TypeError, match=r"text: expected token ids to be a int tensor of shape \[B, L\], got float32"):
        enc(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"text: .*shape \[B, L\], got int64 tensor of shape \[5\]"):
        enc(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="more than max_length=8"):
        enc(torch.ones(2, 9, dtype=torch.long))


def test_word_vectors_from_glove_text_and_pt(tmp_path):
    vocab = Vocab.build(["red circle blue square"])
    enc = fz.create_encoder("text_embedding", vocab_size=len(vocab), embed_dim=3)
    glove = tmp_path / "vectors.txt"
    glove.write_text("red 1 2 3\nsquare 4 5 6\nunseen 7 8 9\n")
    report = enc.load_word_vectors(glove, vocab)
    assert report == {"found": 2, "total": len(vocab), "dim": 3}
    assert enc.embedding.weight[vocab.stoi["red"]].tolist() == [1.0, 2.0, 3.0]
    table = torch.randn(len(vocab), 3)
    torch.save(table, tmp_path / "table.pt")
    enc.load_word_vectors(tmp_path / "table.pt")
    torch.testing.assert_close(enc.embedding.weight[2:], table[2:])
    assert torch.equal(enc.embedding.weight[0], torch.zeros(3))
    glove.write_text("red 1 2\n")
    with pytest.raises(ValueError, match="2 values, the embedding width is 3"):
        enc.load_word_vectors(glove, vocab)


def test_torchvision_backbone_standardises_its_input_for_named_weights_only(tmp_path):
    enc = TorchvisionBackbone(arch="mobilenet_v3_small", normalize=True).eval()
    plain = TorchvisionBackbone(arch="mobilenet_v3_small").eval()
    plain.load_state_dict(enc.state_dict())  # the statistics are not in the state dict
    assert not plain.normalizes_input and set(enc.state_dict()) == set(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    z = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(enc(x), plain(z))
    grey = TorchvisionBackbone(arch="mobilenet_v3_small", in_channels=1, normalize=True)
    assert grey.input_mean.flatten().tolist() == pytest.approx([sum(IMAGENET_MEAN) / 3])
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in plain.trunk.state_dict().items()}, str(path))
    assert not TorchvisionBackbone(arch="mobilenet_v3_small", weights=str(path)).normalizes_input  # a file: say so explicitly


def test_a_standardising_encoder_refuses_standardised_data(tmp_path):
    cfg = load_config({
        "model": {
            "encoders": {"visual": {"name": "resnet18", "in_channels": 1, "normalize": True}},
            "fusion": {"name": "concat_mlp", "out_dim": 8},
            "head": {"name": "linear", "out_dim": 8},
        },
    })
    model = fz.build_model(cfg)

    class Data:
        modalities, num_classes, standardized = ("visual",), 8, ("visual",)

    with pytest.raises(fz.ConfigError, match=r"model\.encoders\.visual: TorchvisionBackbone standardises its input .* already standardises 'visual'"):
        check_model_fits_data(cfg, model, Data())
    Data.standardized = ()
    assert check_model_fits_data(cfg, model, Data()) == 8
