"""``train.cache_frontend``: cached log-mel spectrograms, their collation, and training with them."""

import pytest
import torch
from torch.utils.data import Dataset

import fusionzoo as fz
from fusionzoo.data import Frames, FrontendCache, collate
from fusionzoo.errors import ConfigError
from fusionzoo.training import train
from tests.common import tiny_config

AUDIO_KW = {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16, "channels": [4, 8], "out_dim": 8}
AUDIO = {"name": "audio_spec_cnn", **AUDIO_KW}


class Clips(Dataset):
    def __init__(self, lengths, jitter=False):
        g = torch.Generator().manual_seed(0)
        self.waves = [torch.randn(n, generator=g) for n in lengths]
        self.jitter = jitter
        self.num_classes = 2

    def __len__(self):
        return len(self.waves)

    def __getitem__(self, i):
        wave = self.waves[i] + (torch.randn(1) if self.jitter else 0)
        return {"audio": wave, "label": i % 2}


def test_cached_spectrograms_give_the_waveform_model_output():
    torch.manual_seed(0)
    enc = fz.create_encoder("audio_spec_cnn", **AUDIO_KW).eval()
    data = Clips([4000, 2600, 3900, 1200, 3000])
    cached = FrontendCache(data, "audio", enc.frontend)
    plain = collate([data[i] for i in range(5)])
    fast = collate([cached[i] for i in range(5)])
    assert fast["audio"].shape[:3] == (5, 1, 16) and torch.equal(fast["audio_lengths"], enc.frontend.num_frames(plain["audio_lengths"]))
    torch.testing.assert_close(enc(fast["audio"], fast["audio_lengths"]), enc(plain["audio"], plain["audio_lengths"]), rtol=1e-4, atol=1e-5)
    assert len(cached.cache) == 5 and cached.num_classes == 2  # attributes read through


def test_cache_refuses_a_waveform_that_changed():
    enc = fz.create_encoder("audio_spec_cnn", **AUDIO_KW)
    cached = FrontendCache(Clips([3000, 3000], jitter=True), "audio", enc.frontend)
    cached[0]
    with pytest.raises(ValueError, match="sample 0 'audio' changed since it was cached"):
        cached[0]


def test_frames_collate_pads_the_last_dim_and_checks_the_rest():
    batch = collate([{"a": Frames(torch.ones(2, 3, 5)), "label": 0}, {"a": None, "label": 1}, {"a": Frames(torch.ones(2, 3, 2)), "label": 1}])
    assert batch["a"].shape == (3, 2, 3, 5) and batch["a_lengths"].tolist() == [5, 5, 2]
    assert batch["a"][2, :, :, 2:].abs().sum() == 0 and batch["a"][1].abs().sum() == 0
    assert batch["present"]["a"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="only the last dim may differ"):
        collate([{"a": Frames(torch.ones(2, 3, 5)), "label": 0}, {"a": Frames(torch.ones(2, 4, 5)), "label": 0}])
    with pytest.raises(TypeError, match="mixes Frames and Tensor"):
        collate([{"a": Frames(torch.ones(2, 3, 5)), "label": 0}, {"a": torch.ones(2, 3, 5), "label": 0}])


def test_training_with_the_cache_matches_training_without(tmp_path):
    def config(cache):
        cfg = tiny_config(epochs=2, cache_frontend=cache)
        cfg["model"]["encoders"] = {"audio": AUDIO, "visual": cfg["model"]["encoders"]["visual"]}
        return cfg

    runs = {cache: train(config(cache), tmp_path / str(cache), log=False) for cache in (False, True)}
    for split in ("val", "test"):
        assert abs(runs[True][split]["loss"] - runs[False][split]["loss"]) < 1e-3


def test_cache_frontend_needs_an_audio_front_end(tmp_path):
    with pytest.raises(ConfigError, match="train.cache_frontend: no encoder of this model reads waveforms"):
        train(tiny_config(epochs=1, cache_frontend=True), tmp_path / "r", log=False)
