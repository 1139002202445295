"""Hugging Face ``transformers`` encoders: ``hf_text``, ``hf_audio``, ``hf_vision`` over any ``AutoModel``.

Legend: ``b`` batch, ``n`` tokens (or audio frames, or image patches), ``d`` hidden width, ``t`` samples.

``model=`` is what ``AutoModel.from_pretrained`` takes: a hub name (read from, or downloaded into, the
Hugging Face cache) or a local folder written by ``save_pretrained``; or a mapping, a config to
build with random weights (``{model_type: bert, hidden_size: 32, ...}``, ``AutoConfig.for_model``).
Each encoder owns its preprocessing (:mod:`fusionzoo.encoders.preprocess`): the tokenizer, the
feature extractor or the image processor saved beside the model, so ``encoder.preprocess([raw, ...])``
gives exactly the input ``encoder(x)`` takes.

Pooling (``pool=``): ``mean`` is the masked mean of the hidden states (padding excluded), ``cls`` the
first token's state, ``pooler`` the model's own pooler output (BERT's tanh layer, ViT's, ConvNeXt's
norm), where it has one. ``layer=None`` reads ``last_hidden_state`` (after any final norm); an int
reads ``hidden_states[layer]`` (0 = the embeddings, -1 = the last layer before a final norm).
``forward_tokens`` returns the hidden states and their mask (False = padding) for token fusion.

``transformers`` is imported when an encoder is built, never by ``import fusionzoo``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionzoo.encoders.adapters import add_adapter
from fusionzoo.encoders.base import Encoder
from fusionzoo.encoders.preprocess import AudioPreprocessor, ImagePreprocessor, TextPreprocessor
from fusionzoo.extras import require
from fusionzoo.layers.masking import masked_mean
from fusionzoo.layers.validation import check_tensor
from fusionzoo.registry import ENCODERS

__all__ = ["HFTextEncoder", "HFAudioEncoder", "HFVisionEncoder", "load_hf", "word_tokenizer"]

POOLS = ("mean", "cls", "pooler")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ModelSpec = str | Path | Mapping[str, Any]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _transformers(what: str) -> Any:
    return require("transformers", what)


def _offline_hint(what: str, model: str, error: Exception) -> ValueError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(
        f"{what}: cannot load {model!r} ({first}). A hub name must be in the Hugging Face cache when there is no "
        "network (download it once where there is, e.g. `hf download NAME`), or pass a local folder written by save_pretrained"
    )


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No load report or progress bar: our own pooling choice drops the pooler, which the report
    lists as unexpected weights, and a data loader should not print per worker."""
    logging = transformers.utils.logging
    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def load_hf(auto: str, model: ModelSpec, *, what: str, **kwargs: Any) -> Any:
    """``transformers.<auto>.from_pretrained(model)`` with clear errors, or ``from_config`` for a mapping."""
    transformers = _transformers(what)
    cls = getattr(transformers, auto)
    if isinstance(model, Mapping):
        spec = dict(model)
        if "model_type" not in spec:
            raise ValueError(f"{what}: a model config needs model_type (bert, vit, wav2vec2, ...), got keys {sorted(spec)}")
        config = transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
        with _quiet(transformers):
            return cls.from_config(config, **kwargs)
    path = Path(model)
    if path.exists() and not (path.is_dir() and (path / "config.json").is_file()):
        raise ValueError(f"{what}: {model} is not a Hugging Face model folder (no config.json); write one with save_pretrained")
    if path.is_dir() and not any((path / name).is_file() for name in WEIGHT_FILES):
        # An architecture without weights (what save_preprocessing writes: the weights are fusionzoo's).
        with _quiet(transformers):
            return cls.from_config(transformers.AutoConfig.from_pretrained(str(path)), **kwargs)
    try:
        with _quiet(transformers):
            return cls.from_pretrained(str(model), **kwargs)
    except (OSError, ValueError) as e:
        raise _offline_hint(what, str(model), e) from None


def _load_side(auto: str, source: ModelSpec | None, *, what: str, **kwargs: Any) -> Any:
    """A tokenizer / feature extractor / image processor from a hub name or folder."""
    cls = getattr(_transformers(what), auto)
    path = Path(str(source))
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what}: {source} is a file; give a folder written by save_pretrained or a hub name")
    try:
        return cls.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise _offline_hint(what, str(source), e) from None


def word_tokenizer(words: Sequence[str], *, max_length: int = 512, lowercase: bool = True) -> Any:
    """A BERT-style WordPiece tokenizer over ``words`` (after ``[PAD] [UNK] [CLS] [SEP] [MASK]``), built
    in memory with the ``tokenizers`` library: for models trained from scratch, tests and examples."""
    tokenizers = require("tokenizers", "word_tokenizer")
    fast = _transformers("word_tokenizer").PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return fast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=max_length,
    )


def _has_pooler(backbone: nn.Module) -> bool:
    """Whether the model returns a ``pooler_output`` (its output class is a "...WithPooling..." one and
    no pooler layer was left out)."""
    annotation = str(inspect.signature(backbone.forward).return_annotation)
    return "Pooling" in annotation and not (hasattr(backbone, "pooler") and backbone.pooler is None)


def _hidden_size(config: Any) -> int:
    for key in ("hidden_size", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(f"cannot tell the hidden width of a {type(config).__name__}")


class _HFEncoder(Encoder):
    """A ``transformers`` base model, a pooling and an optional projection to ``out_dim``."""

    #: Reads raw samples through ``self.preprocessor`` (the data hands it strings, waveforms, images).
    takes_raw = True
    auto = "AutoModel"
    registry_name = "hf"

    def __init__(
        self, *, model: ModelSpec, pool: str, layer: int | None, out_dim: int | None, gradient_checkpointing: bool,
        adapter: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        what = f"{self.registry_name} (model={model!r})" if not isinstance(model, Mapping) else self.registry_name
        if pool not in POOLS:
            raise ValueError(f"{self.modality}: pool must be one of {POOLS}, got {pool!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise TypeError(f"{self.modality}: layer must be an int or None, got {layer!r}")
        if out_dim is not None and (isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1):
            raise ValueError(f"{self.modality}: out_dim must be a positive int or None, got {out_dim!r}")
        self.what, self.pool, self.layer = what, pool, layer
        kwargs = {"add_pooling_layer": False} if pool != "pooler" and self._takes_pooling_flag(model) else {}
        backbone = load_hf(self.auto, model, what=what, **kwargs)
        if getattr(backbone.config, "is_encoder_decoder", False):
            backbone = backbone.get_encoder()
        self.backbone = backbone
        if pool == "pooler" and not _has_pooler(backbone):
            raise ValueError(f"{what}: pool='pooler' but {type(backbone).__name__} has no pooler; use 'mean' or 'cls'")
        if pool != "pooler" and isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler.requires_grad_(False)  # computed by the model but unused: kept so its weights load
        num_layers = getattr(backbone.config, "num_hidden_layers", None)
        if layer is not None and num_layers is not None and not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"{self.modality}: layer={layer} but the model has {num_layers} layers (hidden_states 0..{num_layers})")
        if gradient_checkpointing:
            if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.adapter = None if adapter is None else dict(adapter)
        if adapter is not None:
            add_adapter(backbone, adapter, what=what, model_type=getattr(backbone.config, "model_type", None))
        hidden = _hidden_size(backbone.config)
        self.hidden_dim = hidden
        self.proj: nn.Module = nn.Identity() if out_dim is None else nn.Linear(hidden, out_dim)
        self.out_dim = hidden if out_dim is None else out_dim
        self.model_inputs = tuple(inspect.signature(backbone.forward).parameters)

    def _takes_pooling_flag(self, model: ModelSpec) -> bool:
        transformers = _transformers(self.what)
        try:
            config = (
                transformers.AutoConfig.for_model(**{"model_type": model["model_type"]})
                if isinstance(model, Mapping) else transformers.AutoConfig.from_pretrained(str(model))
            )
            cls = transformers.AutoModel._model_mapping[type(config)]
        except (OSError, ValueError, KeyError):
            return False  # load_hf says what is wrong with the model
        return "add_pooling_layer" in inspect.signature(cls.__init__).parameters

    # -- preprocessing
    def preprocess(self, raws: Sequence[Any], **kwargs: Any) -> Any:
        """The batch input for ``raws`` (strings, waveforms or images): see ``self.preprocessor``."""
        return self.preprocessor(raws, **kwargs)

    #: The constructor argument naming where the preprocessing is read from.
    preprocessing_arg = ""

    def _preprocessing_object(self) -> Any:
        raise NotImplementedError

    def save_preprocessing(self, folder: Path) -> dict[str, Any]:
        """The backbone's ``config.json`` (no weights: those are in the fusionzoo model) and the
        tokenizer / feature extractor / image processor, all with their ``save_pretrained``."""
        self.backbone.config.save_pretrained(folder)
        self._preprocessing_object().save_pretrained(folder)
        return {"model": str(folder), self.preprocessing_arg: str(folder)}

    # -- forward
    def _inputs(self, x: Any) -> tuple[dict[str, Tensor], Tensor | None]:
        """The model's keyword inputs, and the input-level mask (tokens, samples) if there is one."""
        raise NotImplementedError

    def _token_mask(self, mask: Tensor | None, hidden: Tensor) -> Tensor | None:
        return None if mask is None else mask.bool()

    def _run(self, x: Any) -> tuple[Tensor, Tensor | None, Any]:
        """``(hidden [b, n, d], mask bool [b, n] or None, outputs)``."""
        inputs, mask = self._inputs(x)
        out = self.backbone(**inputs, output_hidden_states=self.layer is not None, return_dict=True)
        hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        if hidden.dim() == 4:  # a CNN's feature map [b, d, h, w]: its positions are the tokens
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden, self._token_mask(mask, hidden), out

    def _pool(self, hidden: Tensor, mask: Tensor | None, out: Any) -> Tensor:
        if self.pool == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ValueError(f"{self.what}: the model returned no pooler_output; use pool 'mean' or 'cls'")
            return out.pooler_output.flatten(1)
        if self.pool == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask, dim=1)

    def forward(self, x: Any) -> Tensor:
        hidden, mask, out = self._run(x)
        return self.proj(self._pool(hidden, mask, out))

    def forward_tokens(self, x: Any) -> tuple[Tensor, Tensor | None]:
        hidden, mask, _ = self._run(x)
        return self.proj(hidden), mask

    def _check_dict(self, x: Any, keys: Sequence[str]) -> dict[str, Tensor]:
        if not isinstance(x, Mapping) or any(k not in x for k in keys):
            got = sorted(x) if isinstance(x, Mapping) else (f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__)
            raise TypeError(
                f"{self.modality}: {type(self).__name__} takes the dict encoder.preprocess(...) returns, with keys "
                f"{list(keys)}; got {got}"
            )
        return {k: v for k, v in x.items() if k in self.model_inputs}


@ENCODERS.register(
    "hf_text",
    example_kwargs={
        "model": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "vocab_size": 64, "max_position_embeddings": 64},
        "tokenizer": ["a", "red", "blue", "circle", "square", "big", "small", "the"],
        "out_dim": 24,
    },
    reference_kwargs={"model": {"model_type": "bert"}, "tokenizer": ["a", "the", "red", "blue", "cat", "dog", "circle", "square", "small", "big"]},  # bert-base, random weights
    modality="text",
    paper="https://arxiv.org/abs/1810.04805",
    tags=("pretrained", "transformer", "huggingface", "extra:hf"),
)
class HFTextEncoder(_HFEncoder):
    """Any Hugging Face text model (BERT, RoBERTa, DeBERTa-v2, DistilBERT, ModernBERT, ELECTRA, ...)
    with its tokenizer. ``tokenizer`` defaults to ``model``'s; a list of words builds a WordPiece one
    (:func:`word_tokenizer`). Texts longer than ``max_length`` (default: the tokenizer's and the
    model's limit) raise unless ``truncation=True``.

    Shapes: ``preprocess(list[str])`` -> ``{input_ids, attention_mask: long [b, l]}`` -> ``[b, out_dim]``;
    tokens ``[b, l, out_dim]`` with mask ``[b, l]``.
    """

    registry_name = "hf_text"
    preprocessing_arg = "tokenizer"

    def __init__(
        self,
        *,
        model: ModelSpec,
        tokenizer: str | Sequence[str] | None = None,
        pool: str = "mean",
        layer: int | None = None,
        out_dim: int | None = None,
        max_length: int | None = None,
        truncation: bool = False,
        gradient_checkpointing: bool = False,
        adapter: Mapping[str, Any] | None = None,
        modality: str = "text",
    ) -> None:
        self.modality = modality
        super().__init__(model=model, pool=pool, layer=layer, out_dim=out_dim, gradient_checkpointing=gradient_checkpointing, adapter=adapter)
        config = self.backbone.config
        if tokenizer is None:
            if isinstance(model, Mapping):
                raise ValueError(f"{self.what}: a model built from a config needs tokenizer= (a hub name, a folder or a word list)")
            tokenizer = model
        tok = (
            word_tokenizer(list(tokenizer)) if isinstance(tokenizer, (list, tuple))
            else _load_side("AutoTokenizer", tokenizer, what=self.what)
        )
        vocab = getattr(config, "vocab_size", None)
        if vocab is not None and len(tok) > vocab:
            raise ValueError(f"{self.what}: the tokenizer has {len(tok)} tokens but the model's vocabulary has {vocab}: they do not belong together")
        limit = self._position_limit(config)
        tok_limit = tok.model_max_length if tok.model_max_length < 10**6 else None
        limits = [n for n in (limit, tok_limit) if n is not None]
        if max_length is None:
            if not limits:
                raise ValueError(f"{self.what}: the model and tokenizer name no length limit; give max_length")
            max_length = min(limits)
        elif limit is not None and max_length > limit:
            raise ValueError(f"{self.what}: max_length={max_length} is more than the model's {limit} positions")
        self.max_length = int(max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in self.model_inputs]
        self.preprocessor = TextPreprocessor(tok, max_length=self.max_length, truncation=truncation, keys=keys, modality=modality)

    def _preprocessing_object(self) -> Any:
        return self.preprocessor.tokenizer

    @staticmethod
    def _position_limit(config: Any) -> int | None:
        n = getattr(config, "max_position_embeddings", None)
        if n is None:
            return None
        if "roberta" in config.model_type or config.model_type in ("camembert", "longformer"):
            n -= config.pad_token_id + 1  # positions start after the padding index
        return int(n)

    def _inputs(self, x: Any) -> tuple[dict[str, Tensor], Tensor | None]:
        inputs = self._check_dict(x, ("input_ids", "attention_mask"))
        check_tensor(inputs["input_ids"], name=self.modality, shape=("B", "L"), dtype="int", what="input_ids")
        return inputs, x["attention_mask"]

    def example_input(self, batch_size: int = 2) -> dict[str, Tensor]:
        words = ["a red circle", "the big blue square", "small", "a small red square", "blue"]
        return self.preprocess([words[i % len(words)] for i in range(batch_size)])


@ENCODERS.register(
    "hf_audio",
    example_kwargs={
        "model": {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "conv_dim": [16, 16], "conv_stride": [5, 4], "conv_kernel": [10, 8],
                  "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "do_stable_layer_norm": True,
                  "feat_extract_norm": "layer"},
        "out_dim": 24,
    },
    reference_kwargs={"model": {"model_type": "wav2vec2"}},  # wav2vec2-base, random weights
    modality="audio",
    paper="https://arxiv.org/abs/2006.11477",
    tags=("pretrained", "transformer", "speech", "huggingface", "extra:hf"),
)
class HFAudioEncoder(_HFEncoder):
    """Any Hugging Face speech model (wav2vec2, HuBERT, WavLM, ...) with its feature extractor.

    ``sample_rate`` is the rate of the waveforms the data gives (None: the model's own); they are
    resampled to the model's rate (``resample=False`` makes another rate an error). The token mask
    marks the frames computed from real samples, not padding.

    Shapes: ``preprocess(list[float [t]])`` -> ``{input_values float [b, t], attention_mask [b, t]}``
    -> ``[b, out_dim]``; tokens ``[b, n, out_dim]`` with mask ``[b, n]``.
    """

    registry_name = "hf_audio"
    preprocessing_arg = "feature_extractor"

    def __init__(
        self,
        *,
        model: ModelSpec,
        feature_extractor: str | None = None,
        sample_rate: int | None = None,
        resample: bool = True,
        pool: str = "mean",
        layer: int | None = None,
        out_dim: int | None = None,
        gradient_checkpointing: bool = False,
        adapter: Mapping[str, Any] | None = None,
        modality: str = "audio",
    ) -> None:
        self.modality = modality
        if pool == "cls":
            raise ValueError(f"{modality}: speech models have no CLS token; pool must be 'mean' or 'pooler'")
        super().__init__(model=model, pool=pool, layer=layer, out_dim=out_dim, gradient_checkpointing=gradient_checkpointing, adapter=adapter)
        source = feature_extractor if feature_extractor is not None else (None if isinstance(model, Mapping) else model)
        if source is None:
            extractor = self._default_extractor()
        else:
            extractor = _load_side("AutoFeatureExtractor", source, what=self.what)
        # The pretrained extractor says whether the model was trained with an attention mask
        # (wav2vec2-base was not: it reads zero padding); masked pooling always uses the valid frames.
        self.pass_mask = bool(getattr(extractor, "return_attention_mask", True)) and "attention_mask" in self.model_inputs
        self.preprocessor = AudioPreprocessor(
            extractor, sample_rate=sample_rate, model_rate=extractor.sampling_rate, resample=resample,
            min_samples=self._receptive_field(self.backbone.config), modality=modality,
        )
        self.sample_rate = sample_rate or extractor.sampling_rate

    def _preprocessing_object(self) -> Any:
        return self.preprocessor.extractor

    def _default_extractor(self) -> Any:
        transformers = _transformers(self.what)
        return transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True)

    @staticmethod
    def _receptive_field(config: Any) -> int:
        kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
        if not kernels or not strides:
            return 1
        field, jump = 1, 1
        for k, s in zip(kernels, strides):
            field += (k - 1) * jump
            jump *= s
        return field

    def _inputs(self, x: Any) -> tuple[dict[str, Tensor], Tensor | None]:
        key = "input_values" if "input_values" in self.model_inputs else "input_features"
        self._check_dict(x, (key, "attention_mask"))
        inputs = {key: x[key]}
        if self.pass_mask:
            inputs["attention_mask"] = x["attention_mask"]
        return inputs, x["attention_mask"]

    def _token_mask(self, mask: Tensor | None, hidden: Tensor) -> Tensor | None:
        frames = getattr(self.backbone, "_get_feature_vector_attention_mask", None)
        if frames is None or mask is None:
            return None
        return frames(hidden.shape[1], mask).bool()

    def example_input(self, batch_size: int = 2) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(batch_size)
        rate = self.preprocessor.model_rate  # up to 1 s: long enough for the model's training-time time masks
        lengths = [rate - rate // 4 * (i % 3) for i in range(batch_size)]
        return self.preprocess([torch.randn(n, generator=g) for n in lengths], sample_rate=rate)


class _HFImageTransform:
    """The Hugging Face image processor applied to float images in [0, 1] (no second rescale)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: list[Tensor]) -> Tensor:
        return self.processor(images, do_rescale=False, return_tensors="pt")["pixel_values"]


@ENCODERS.register(
    "hf_vision",
    example_kwargs={
        "model": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "image_size": 32, "patch_size": 8},
        "out_dim": 24,
    },
    reference_kwargs={"model": {"model_type": "vit"}},  # ViT-B/16 at 224, random weights
    modality="visual",
    paper="https://arxiv.org/abs/2010.11929",
    tags=("pretrained", "transformer", "huggingface", "extra:hf"),
)
class HFVisionEncoder(_HFEncoder):
    """Any Hugging Face vision model (ViT, DINOv2, Swin, ConvNeXt, the CLIP / SigLIP vision towers,
    ...) with its image processor (resize, crop, mean/std: the encoder standardises its input, so the
    data must not). A CNN's feature map positions are its tokens; ``cls`` needs a model with a CLS
    token.

    Shapes: ``preprocess(list[[c, h, w]])`` -> ``float [b, c, H, W]`` -> ``[b, out_dim]``; tokens
    ``[b, n, out_dim]``.
    """

    registry_name = "hf_vision"
    preprocessing_arg = "image_processor"
    normalizes_input = True

    def __init__(
        self,
        *,
        model: ModelSpec,
        image_processor: str | None = None,
        pool: str = "cls",
        layer: int | None = None,
        out_dim: int | None = None,
        gradient_checkpointing: bool = False,
        adapter: Mapping[str, Any] | None = None,
        modality: str = "visual",
    ) -> None:
        self.modality = modality
        super().__init__(model=model, pool=pool, layer=layer, out_dim=out_dim, gradient_checkpointing=gradient_checkpointing, adapter=adapter)
        config = self.backbone.config
        if pool == "cls" and getattr(config, "hidden_sizes", None) and not hasattr(config, "hidden_size"):
            raise ValueError(f"{self.what}: a CNN ({config.model_type}) has no CLS token; pool must be 'mean' or 'pooler'")
        source = image_processor if image_processor is not None else (None if isinstance(model, Mapping) else model)
        if source is None:
            processor = self._default_processor(config)
        else:
            processor = _load_side("AutoImageProcessor", source, what=self.what)
        self.preprocessor = ImagePreprocessor(_HFImageTransform(processor), channels=getattr(config, "num_channels", 3), modality=modality)

    def _preprocessing_object(self) -> Any:
        return self.preprocessor.transform.processor

    def _default_processor(self, config: Any) -> Any:
        size = getattr(config, "image_size", 224)
        return _transformers(self.what).ViTImageProcessor(size={"height": size, "width": size})

    def _inputs(self, x: Any) -> tuple[dict[str, Tensor], Tensor | None]:
        if isinstance(x, Mapping):
            x = x.get("pixel_values")
        return {"pixel_values": check_tensor(x, name=self.modality, shape=("B", "C", "H", "W"), what="pixel values (encoder.preprocess(images))")}, None

    def example_input(self, batch_size: int = 2) -> Tensor:
        g = torch.Generator().manual_seed(batch_size)
        return self.preprocess([torch.rand(3, 20 + 4 * (i % 3), 24, generator=g) for i in range(batch_size)])
