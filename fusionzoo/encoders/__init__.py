"""Modality encoders, one file per modality; importing this package registers them in ``ENCODERS``."""

from fusionzoo.encoders import audio, features, hf, open_clip, text, timm, visual
from fusionzoo.encoders.audio import AudioResNet18, AudioSpecCNN, LogMelFrontEnd
from fusionzoo.encoders.base import Encoder
from fusionzoo.encoders.features import FeatureMLPEncoder
from fusionzoo.encoders.hf import HFAudioEncoder, HFTextEncoder, HFVisionEncoder
from fusionzoo.encoders.text import (
    TextEmbeddingEncoder,
    TextLSTMEncoder,
    TextTransformerEncoder,
    load_word_vectors,
)
from fusionzoo.encoders.open_clip import OpenCLIPImageEncoder, OpenCLIPTextEncoder
from fusionzoo.encoders.timm import TimmEncoder
from fusionzoo.encoders.visual import BACKBONES, LeNet, TorchvisionBackbone, VisualCNN

__all__ = [
    "BACKBONES",
    "AudioResNet18",
    "AudioSpecCNN",
    "Encoder",
    "FeatureMLPEncoder",
    "HFAudioEncoder",
    "HFTextEncoder",
    "HFVisionEncoder",
    "LeNet",
    "LogMelFrontEnd",
    "OpenCLIPImageEncoder",
    "OpenCLIPTextEncoder",
    "TextEmbeddingEncoder",
    "TextLSTMEncoder",
    "TextTransformerEncoder",
    "TimmEncoder",
    "TorchvisionBackbone",
    "VisualCNN",
    "audio",
    "features",
    "hf",
    "load_word_vectors",
    "open_clip",
    "text",
    "timm",
    "visual",
]
