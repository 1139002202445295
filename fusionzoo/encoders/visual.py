"""Visual encoders: a configurable CNN, MultiBench's LeNet, and torchvision backbones.

Legend: ``b`` batch, ``c`` channels, ``h w`` height width, ``n`` tokens, ``d`` features.

Every encoder splits ``forward_features`` (the feature map) from ``forward_head`` (pooling and the
projection to ``out_dim``), as timm does, so users can stop before the projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.encoders.base import Encoder
from fusionzoo.layers.conv import ConvNormAct
from fusionzoo.layers.validation import check_positive_int, check_tensor
from fusionzoo.registry import ENCODERS
from fusionzoo.weights import (
    LoadReport,
    adapt_input_conv,
    load_partial,
    load_state_dict_file,
)

__all__ = ["VisualCNN", "LeNet", "TorchvisionBackbone", "BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD"]

# The input statistics every torchvision classification weight set here was trained with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _VisualEncoder(Encoder):
    """Shared input checks, pooling, projection and token output of the visual encoders."""

    modality = "visual"
    in_channels: int
    min_size: int = 16
    feature_dim: int

    def _init_head(self, out_dim: int | None) -> None:
        self.out_dim = self.feature_dim if out_dim is None else check_positive_int(out_dim, name="out_dim", where=type(self).__name__)
        self.proj = nn.Identity() if out_dim is None else nn.Linear(self.feature_dim, out_dim)

    def _check(self, x: Tensor) -> None:
        check_tensor(x, name="visual", shape=("B", self.in_channels, "H", "W"))
        if x.shape[-1] < self.min_size or x.shape[-2] < self.min_size:
            raise ValueError(
                f"visual: {type(self).__name__} needs images of at least {self.min_size}x{self.min_size}, "
                f"got shape {list(x.shape)}"
            )

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling, then the projection unless ``pre_logits``."""
        pooled = features.mean(dim=(-2, -1))
        return pooled if pre_logits else self.proj(pooled)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.forward_head(self.forward_features(x))

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The last feature map as ``h*w`` projected tokens (no padding, so no mask)."""
        self._check(x)
        tokens = rearrange(self.forward_features(x), "b c h w -> b (h w) c")
        return self.proj(tokens), None

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_channels, 32, 32)


@ENCODERS.register(
    "visual_cnn",
    example_kwargs={"out_dim": 32, "in_channels": 3, "channels": (8, 16)},
    modality="visual",
    tags=("cnn",),
)
class VisualCNN(_VisualEncoder):
    """A configurable conv stack: per stage ``blocks_per_stage`` conv-norm-act blocks, a 2x2 max-pool
    between stages, then global average pooling and a projection to ``out_dim``.

    Shapes: ``[b, in_channels, h, w] -> [b, out_dim]`` for ``h, w >= 16``; tokens
    ``[b, (h / 2^(S-1)) * (w / 2^(S-1)), out_dim]`` for ``S`` stages.
    """

    def __init__(
        self,
        *,
        out_dim: int | None = 128,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 1,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"visual: in_channels must be 1 or 3, got {in_channels}")
        if not channels or len(channels) > 4:
            raise ValueError(f"visual: channels needs 1 to 4 stages (a 16x16 input survives 4), got {list(channels)}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(blocks_per_stage):
                layers.append(ConvNormAct(c_in, c, 3, norm=norm, activation=activation))
                c_in = c
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels[-1]
        self._init_head(out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


@ENCODERS.register(
    "lenet",
    example_kwargs={"out_dim": 32, "in_channels": 1, "channels": 4, "additional_layers": 2},
    modality="visual",
    paper="https://github.com/pliang279/MultiBench/blob/main/unimodals/common_models.py",
    tags=("cnn", "baseline", "multibench"),
)
class LeNet(_VisualEncoder):
    """MultiBench's LeNet (the AV-MNIST image baseline): a 5x5 conv, then ``additional_layers`` 3x3
    convs doubling the channels, each conv followed by BatchNorm, ReLU and a 2x2 max-pool.

    MultiBench's AV-MNIST uses ``LeNet(1, 6, 3)`` on 28x28 digits (48 output channels); here the map
    is average-pooled globally, so any input of at least ``2^(L+1)`` pixels works, and ``out_dim``
    adds a projection (``None`` keeps the native ``channels * 2^L`` width).

    Shapes: ``[b, in_channels, h, w] -> [b, out_dim]``.
    """

    def __init__(
        self, *, out_dim: int | None = None, in_channels: int = 1, channels: int = 6, additional_layers: int = 3
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"visual: in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels
        self.min_size = 2 ** (additional_layers + 1)
        layers: list[nn.Module] = []
        c_in, c = in_channels, channels
        for i in range(additional_layers + 1):
            kernel = 5 if i == 0 else 3
            # ReLU after the max-pool: the two commute (both take maxima), and the ReLU then touches a
            # quarter of the values. Same outputs and gradients as MultiBench's conv-BN-ReLU-pool.
            layers += [nn.Conv2d(c_in, c, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c), nn.MaxPool2d(2), nn.ReLU()]
            c_in, c = c, c * 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = c_in
        self._init_head(out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


# name -> (dotted path of the first conv, width of the pooled features, classifier attribute)
BACKBONES: dict[str, tuple[str, int, str]] = {
    "resnet18": ("conv1", 512, "fc"),
    "resnet34": ("conv1", 512, "fc"),
    "resnet50": ("conv1", 2048, "fc"),
    "mobilenet_v3_small": ("features.0.0", 576, "classifier"),
    "efficientnet_b0": ("features.0.0", 1280, "classifier"),
}


class TorchvisionBackbone(_VisualEncoder):
    """A torchvision classification network without its classifier; ``out_dim=None`` (the default)
    keeps the pooled features at the network's native width (512 for resnet18), an int adds a
    projection to ``out_dim``.

    ``weights`` is ``None`` (random init), a torchvision weights name such as ``"IMAGENET1K_V1"`` or
    ``"DEFAULT"`` (downloaded by torchvision on first use), or a path to a state dict (``.pt``,
    ``.pth``, ``.safetensors``) holding either the torchvision network's keys or this encoder's own
    (``trunk.*``, ``proj.*``). ``in_channels=1`` sums the first conv's pretrained kernels over RGB
    (timm's ``adapt_input_conv``). The loading report (missing / unexpected / mismatched keys) is kept
    in ``load_report``; the removed classifier's keys are expected to be unused.

    ``normalize`` standardises the input with the weights' ImageNet mean and std inside the encoder,
    so a pretrained trunk sees what it was trained on from every dataset, in training, evaluation and
    export alike; the input is then an image in [0, 1]. By default it is on exactly when ``weights``
    names torchvision weights (a weights file may hold anything: say ``normalize: true`` for
    ImageNet-trained files). With one input channel the mean of the three channels' statistics is
    used (as timm does). Datasets that standardise images themselves must not do so too: the
    training loop refuses that pairing.

    Shapes: ``[b, in_channels, h, w] -> [b, out_dim]``.
    """

    def __init__(
        self,
        *,
        arch: str,
        out_dim: int | None = None,
        in_channels: int = 3,
        weights: str | Path | None = None,
        progress: bool = True,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        if arch not in BACKBONES:
            raise ValueError(f"visual: unknown backbone {arch!r}; choose one of {sorted(BACKBONES)}")
        if in_channels < 1:
            raise ValueError(f"visual: in_channels must be positive, got {in_channels}")
        self.arch = arch
        self.in_channels = in_channels
        self.min_size = 16
        conv_path, self.feature_dim, classifier = BACKBONES[arch]
        trunk = torchvision.models.get_model(arch, weights=None)
        setattr(trunk, classifier, nn.Identity())  # forward_features never calls it; keeps keys tidy
        self.trunk = trunk
        self._conv_key = conv_path + ".weight"
        self._init_head(out_dim)
        self.load_report: LoadReport | None = None
        state = self._weights_state_dict(weights, progress)
        if in_channels != 3:
            self._replace_first_conv(in_channels)
        if state is not None:
            self.load_report = self._load(state)
        named = weights is not None and not isinstance(weights, Path) and Path(str(weights)).suffix not in (".pt", ".pth", ".bin", ".safetensors")
        self.normalizes_input = named if normalize is None else bool(normalize)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((sum(IMAGENET_MEAN) / 3,) * in_channels, (sum(IMAGENET_STD) / 3,) * in_channels)
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def _weights_state_dict(self, weights: str | Path | None, progress: bool) -> dict[str, Tensor] | None:
        if weights is None:
            return None
        if isinstance(weights, Path) or Path(str(weights)).suffix in (".pt", ".pth", ".bin", ".safetensors"):
            return load_state_dict_file(weights)
        enum = torchvision.models.get_model_weights(self.arch)
        if weights not in enum.__members__:
            raise ValueError(
                f"visual: unknown weights {weights!r} for {self.arch}; use None, a file path, or one of "
                f"{list(enum.__members__)}"
            )
        # Never unpickle a download: weights_only=True, and the SHA-256 prefix in torchvision's file name is checked.
        return enum[weights].get_state_dict(progress=progress, check_hash=True, weights_only=True)

    def _replace_first_conv(self, in_channels: int) -> None:
        parent_path, _, name = self._conv_key.removesuffix(".weight").rpartition(".")
        parent = self.trunk.get_submodule(parent_path) if parent_path else self.trunk
        old: nn.Conv2d = getattr(parent, name)
        new = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding, bias=old.bias is not None
        )
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(old.weight, in_channels))
        setattr(parent, name, new)

    def _load(self, state: dict[str, Tensor]) -> LoadReport:
        own = any(k.startswith("trunk.") for k in state)
        if not own:  # torchvision keys: drop the classifier, map into the trunk
            classifier = BACKBONES[self.arch][2] + "."
            state = {f"trunk.{k}": v for k, v in state.items() if not k.startswith(classifier)}
        conv_key = f"trunk.{self._conv_key}"
        if conv_key in state and state[conv_key].shape[1] != self.in_channels:
            state[conv_key] = adapt_input_conv(state[conv_key], self.in_channels)
        report = load_partial(self, state)
        trunk_missing = [k for k in report.missing if k.startswith("trunk.")]
        if trunk_missing or report.unexpected:
            raise ValueError(
                f"visual: the weights do not match {self.arch} ({len(trunk_missing)} trunk tensors missing, "
                f"{len(report.unexpected)} unexpected):\n{report}"
            )
        return report

    def forward_features(self, x: Tensor) -> Tensor:
        if self.normalizes_input:
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        t = self.trunk
        if self.arch.startswith("resnet"):
            x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
            return t.layer4(t.layer3(t.layer2(t.layer1(x))))
        return t.features(x)


def _backbone(arch: str):
    def build(
        *, out_dim: int | None = None, in_channels: int = 3, weights: str | Path | None = None, progress: bool = True,
        normalize: bool | None = None,
    ) -> TorchvisionBackbone:
        return TorchvisionBackbone(arch=arch, out_dim=out_dim, in_channels=in_channels, weights=weights, progress=progress, normalize=normalize)

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (
        f"torchvision ``{arch}`` without its classifier, at its native width or projected to ``out_dim``; "
        "see :class:`TorchvisionBackbone`."
    )
    return build


_PAPERS = {
    "resnet": "https://arxiv.org/abs/1512.03385",
    "mobilenet": "https://arxiv.org/abs/1905.02244",
    "efficientnet": "https://arxiv.org/abs/1905.11946",
}
for _arch in BACKBONES:
    ENCODERS.register(
        _arch,
        example_kwargs={"out_dim": 32},
        modality="visual",
        paper=next(url for key, url in _PAPERS.items() if _arch.startswith(key)),
        tags=("cnn", "torchvision", "pretrained"),
    )(_backbone(_arch))
