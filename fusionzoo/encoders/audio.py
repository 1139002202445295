"""Audio encoders on a log-mel spectrogram computed inside the module (so on the model's device).

Legend: ``b`` batch, ``t`` samples or frames, ``f`` mel bins, ``c`` channels, ``n`` tokens, ``d`` features.

Padded batches: pass ``lengths`` (``long [b]``, valid samples per waveform, or valid frames for a
spectrogram input) to ``forward`` / ``forward_tokens``; :class:`~fusionzoo.models.MultimodalModel`
passes ``batch["audio_lengths"]`` when the batch has it. Frames are computed without centring
(``center=False``), so a frame is valid when it lies wholly inside the signal, and every statistic
(top-dB clamp, normalisation, pooling) reads valid frames only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio.transforms as T
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.encoders.base import Encoder
from fusionzoo.encoders.visual import TorchvisionBackbone
from fusionzoo.layers.conv import ConvNormAct
from fusionzoo.layers.masking import masked_mean
from fusionzoo.layers.validation import check_positive_int, check_range, check_tensor
from fusionzoo.registry import ENCODERS

__all__ = ["LogMelFrontEnd", "AudioSpecCNN", "AudioResNet18"]

INPUTS = ("waveform", "spectrogram")


def _frame_mask(lengths: Tensor, frames: int) -> Tensor:
    return torch.arange(frames, device=lengths.device) < lengths.unsqueeze(1)


class LogMelFrontEnd(nn.Module):
    """Waveform -> log-mel spectrogram (dB), top-dB clamp and per-example normalisation over valid
    frames, and SpecAugment (frequency and time masking) in training mode only.

    Shapes: waveform ``[b, t]`` (+ lengths ``[b]`` in samples) -> ``([b, 1, f, frames], frame lengths [b])``.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        top_db: float | None = 80.0,
        normalize: bool = True,
        freq_mask: int = 0,
        time_mask: int = 0,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.top_db = top_db
        self.normalize = normalize
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=False
        )
        self.to_db = T.AmplitudeToDB(stype="power", top_db=None)
        self.freq_masking = T.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask > 0 else None
        self.time_masking = T.TimeMasking(time_mask, iid_masks=True) if time_mask > 0 else None

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames wholly inside ``lengths`` samples."""
        return torch.div(lengths - self.n_fft, self.hop_length, rounding_mode="floor").add(1).clamp(min=0)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, t = wave.shape
        if t < self.n_fft:
            raise ValueError(f"audio: waveform has {t} samples, fewer than n_fft={self.n_fft}")
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=wave.device)
        else:
            wave = torch.where(torch.arange(t, device=wave.device) < lengths.unsqueeze(1), wave, 0.0)
        spec = self.to_db(self.mel(wave))  # [b, f, frames]
        frames = self.num_frames(lengths)
        return self.postprocess(spec.unsqueeze(1), frames)

    def postprocess(self, spec: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Clamp, normalise and augment a ``[b, 1, f, t]`` dB spectrogram using only valid frames."""
        valid = _frame_mask(frames, spec.shape[-1])[:, None, None, :]  # [b, 1, 1, t]
        count = (frames.clamp(min=1) * spec.shape[-2]).to(spec.dtype)[:, None, None, None]
        if self.top_db is not None:
            neg = torch.finfo(spec.dtype).min
            peak = torch.where(valid, spec, neg).amax(dim=(-3, -2, -1), keepdim=True)
            spec = torch.maximum(spec, peak - self.top_db)
        if self.normalize:
            mean = torch.where(valid, spec, 0.0).sum(dim=(-3, -2, -1), keepdim=True) / count
            var = torch.where(valid, (spec - mean) ** 2, 0.0).sum(dim=(-3, -2, -1), keepdim=True) / count
            spec = (spec - mean) / (var + 1e-5).sqrt()
        spec = torch.where(valid, spec, 0.0)
        if self.training:
            if self.freq_masking is not None:
                spec = self.freq_masking(spec)
            if self.time_masking is not None:
                spec = self.time_masking(spec)
        return spec, frames


class _AudioEncoder(Encoder):
    """Input checks and the front end shared by the audio encoders."""

    modality = "audio"
    input: str
    frontend: LogMelFrontEnd

    def _init_input(self, input: str, sample_rate: int, **frontend: object) -> None:
        if input not in INPUTS:
            raise ValueError(f"audio: input must be one of {INPUTS}, got {input!r}")
        self.input = input
        self.sample_rate = sample_rate
        self.frontend = LogMelFrontEnd(sample_rate=sample_rate, **frontend)

    def example_input(self, batch_size: int = 2) -> Tensor:
        if self.input == "spectrogram":
            return torch.randn(batch_size, 1, self.frontend.n_mels, 64)
        return torch.randn(batch_size, self.sample_rate // 2)

    min_frames: int = 1  # spectrogram frames the network needs

    def _check_length(self, x: Tensor, lengths: Tensor | None) -> None:
        """The padded length is long enough for the network; every length is in ``[1, T]``."""
        t = x.shape[-1]
        waveform = self.input == "waveform"
        need = self.frontend.n_fft + self.frontend.hop_length * (self.min_frames - 1) if waveform else self.min_frames
        unit = "samples" if waveform else "frames"
        if t < need:
            raise ValueError(f"audio: {type(self).__name__} needs at least {need} {unit} per clip, got {t}")
        if lengths is not None:
            check_range(lengths, 1, t, what="audio: lengths", expected=f"[1, {t}] ({unit} of the padded input)")

    def spectrogram(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Validate the input and return ``(log-mel [b, 1, f, t], valid frames [b])``."""
        if self.input == "waveform":
            if isinstance(x, Tensor) and x.dim() == 3 and x.shape[1] == 1:
                x = x.squeeze(1)
            check_tensor(x, name="audio", shape=("B", "T"), what="waveform")
        else:
            check_tensor(x, name="audio", shape=("B", 1, self.frontend.n_mels, "T"), what="spectrogram")
        if lengths is not None:
            check_tensor(lengths, name="audio", shape=(x.shape[0],), dtype="int", what="lengths")
        self._check_length(x, lengths)
        if self.input == "waveform":
            return self.frontend(x, lengths)
        frames = lengths if lengths is not None else torch.full((x.shape[0],), x.shape[-1], device=x.device)
        return self.frontend.postprocess(x, frames.clamp(max=x.shape[-1]))


@ENCODERS.register(
    "audio_spec_cnn",
    example_kwargs={"out_dim": 32, "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32, "channels": (8, 16)},
    modality="audio",
    tags=("cnn", "spectrogram"),
)
class AudioSpecCNN(_AudioEncoder):
    """Log-mel front end, then a 2-D CNN over (mel, time) with a 2x2 max-pool between stages,
    masked global pooling and a projection to ``out_dim``.

    The CNN re-zeroes padded frames after every block, so in eval mode a padded waveform with its
    ``lengths`` gives the same output as the unpadded one. ``forward_tokens`` gives one token per
    (pooled) time frame, with the padding mask.

    Shapes: waveform ``[b, t]`` or ``[b, 1, t]`` (or spectrogram ``[b, 1, n_mels, t]``) -> ``[b, out_dim]``;
    tokens ``[b, frames / 2^(S-1), out_dim]``.
    """

    def __init__(
        self,
        *,
        out_dim: int = 128,
        sample_rate: int = 16000,
        input: str = "waveform",
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        top_db: float | None = 80.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="AudioSpecCNN")
        if not channels or n_mels < 2 ** (len(channels) - 1):
            raise ValueError(f"audio: {len(channels)} stages need n_mels >= {2 ** (len(channels) - 1)}, got {n_mels}")
        self._init_input(
            input, sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, top_db=top_db,
            freq_mask=freq_mask, time_mask=time_mask,
        )
        self.min_frames = 2 ** (len(channels) - 1)  # each 2x2 max-pool halves time
        self.blocks = nn.ModuleList()
        c_in = 1
        for c in channels:
            self.blocks.append(ConvNormAct(c_in, c, 3, norm=norm))
            c_in = c
        self.pool = nn.MaxPool2d(2)
        self.proj = nn.Linear(c_in, out_dim)

    def forward_features(self, spec: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Masked CNN: ``([b, 1, f, t], [b]) -> ([b, c, f', t'], [b])``."""
        x = spec
        for i, block in enumerate(self.blocks):
            if i > 0:
                # A pooled frame that straddles the end mixes in padding: zero it before the conv reads it.
                x, frames = self.pool(x), torch.div(frames, 2, rounding_mode="floor")
                x = torch.where(_frame_mask(frames, x.shape[-1])[:, None, None, :], x, 0.0)
            x = block(x)
            x = torch.where(_frame_mask(frames, x.shape[-1])[:, None, None, :], x, 0.0)
        return x, frames

    def _tokens(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        feats, frames = self.forward_features(*self.spectrogram(x, lengths))
        return rearrange(feats.mean(dim=2), "b c t -> b t c"), _frame_mask(frames, feats.shape[-1])

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        tokens, mask = self._tokens(x, lengths)
        return self.proj(masked_mean(tokens, mask, dim=1))

    def forward_tokens(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        tokens, mask = self._tokens(x, lengths)
        return self.proj(tokens), mask


@ENCODERS.register(
    "audio_resnet18",
    example_kwargs={"out_dim": 32, "sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32},
    modality="audio",
    paper="https://arxiv.org/abs/1512.03385",
    tags=("cnn", "spectrogram", "torchvision", "pretrained"),
)
class AudioResNet18(_AudioEncoder):
    """torchvision ResNet-18 (1 input channel) on the log-mel spectrogram; pooling over valid frames.

    ``weights`` as for the visual backbones (ImageNet weights have their first conv summed over RGB).
    The pooling ignores the padded frames of the final feature map; unlike ``audio_spec_cnn`` the
    trunk's receptive field still sees a few padded frames at the end of each signal.

    Shapes: waveform ``[b, t]`` -> ``[b, out_dim]``; tokens ``[b, ceil(frames / 32), out_dim]``.
    """

    def __init__(
        self,
        *,
        out_dim: int | None = None,
        sample_rate: int = 16000,
        input: str = "waveform",
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        top_db: float | None = 80.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        weights: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self._init_input(
            input, sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, top_db=top_db,
            freq_mask=freq_mask, time_mask=time_mask,
        )
        self.min_frames = 16  # the stem and four stages downsample time 32x; fewer frames break the max-pool
        self.backbone = TorchvisionBackbone(arch="resnet18", out_dim=out_dim, in_channels=1, weights=weights, progress=progress)
        self.out_dim = self.backbone.out_dim

    def _tokens(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        spec, frames = self.spectrogram(x, lengths)
        if spec.shape[-2] < 16:
            raise ValueError(f"audio: ResNet-18 needs at least 16 mel bands, got {spec.shape[-2]}")
        feats = self.backbone.forward_features(spec)
        for _ in range(5):  # stem conv, max-pool and three strided stages each halve time, rounding up
            frames = torch.div(frames + 1, 2, rounding_mode="floor")
        return rearrange(feats.mean(dim=2), "b c t -> b t c"), _frame_mask(frames, feats.shape[-1])

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        tokens, mask = self._tokens(x, lengths)
        return self.backbone.proj(masked_mean(tokens, mask, dim=1))

    def forward_tokens(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        tokens, mask = self._tokens(x, lengths)
        return self.backbone.proj(tokens), mask
