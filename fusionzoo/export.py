"""Export a trained model for serving: ``torch.export`` programs (``.pt2``) and ONNX.

Legend: ``b`` batch, ``t`` samples or tokens.

The exported graph takes plain tensors in a fixed order (:class:`ServingModel`): each modality's
input, ``<m>_lengths`` for an encoder that reads valid lengths (audio), then one ``present_<m>``
bool ``[b]`` mask per modality, so a served model handles a missing modality per request (mark it
False; its input may hold anything of the right shape). The batch dimension is dynamic, and so is
the number of text tokens; image sizes and the waveform length are fixed at export (``shapes``:
by default those of the saved model's data, recorded in its card): pad a shorter clip with zeros
and pass its length in ``<m>_lengths``. (A dynamic waveform length does not export: the frame
counts after each max-pool become guards on the length's parity.) The audio front end (STFT, mel,
dB) is part of the graph.

For an encoder that owns its preprocessing (``hf_text``, ``hf_audio``, ``hf_vision``, ``timm``) the
graph starts after it: the caller runs ``encoder.preprocess`` (the tokenizer; resampling and the
feature extractor; resize, crop and mean/std) and passes its tensors, one input per key of a dict
(``text_input_ids``, ``text_attention_mask``); token and waveform lengths stay dynamic where the
graph allows (the Hugging Face speech models' convolutions do), images keep the traced size.

ONNX needs the optional extra (``pip install fusionzoo[export]``: onnx, onnxscript, onnxruntime);
:func:`check_onnx` compares ONNX Runtime with eager PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionzoo.atomic import atomic_path
from fusionzoo.encoders.base import takes_lengths, takes_raw
from fusionzoo.models.multimodal import MultimodalModel

__all__ = ["ServingModel", "example_inputs", "export_pt2", "export_onnx", "check_onnx", "FORMATS"]

FORMATS = ("pt2", "onnx")


class ServingModel(nn.Module):
    """``model`` with positional tensor inputs named :attr:`input_names`; returns the logits ``[b, out]``.

    An encoder whose preprocessing gives a dict (a tokenizer's ``input_ids`` and ``attention_mask``)
    takes one input per key, named ``<m>_<key>``: the tokenizer itself stays outside the graph.
    """

    def __init__(self, model: MultimodalModel) -> None:
        super().__init__()
        if not isinstance(model, MultimodalModel):
            raise ValueError(f"export: only classifiers (MultimodalModel) are exported, got {type(model).__name__}")
        model = model.merged() if any(getattr(e, "adapter", None) for e in model.encoders.values()) else model
        self.model = model.eval()  # adapters folded into their base weights: the plain graph
        self.modalities = model.modalities
        self.lengths = tuple(m for m in self.modalities if takes_lengths(type(model.encoders[m])))
        #: modality -> the keys of its dict input (modalities with a plain tensor input are absent)
        self.keys = {m: keys for m in self.modalities if (keys := _input_keys(model.encoders[m]))}
        inputs = [name for m in self.modalities for name in ([f"{m}_{k}" for k in self.keys[m]] if m in self.keys else [m])]
        self.input_names = [*inputs, *(f"{m}_lengths" for m in self.lengths), *(f"present_{m}" for m in self.modalities)]

    def forward(self, *inputs: Tensor) -> Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        batch: dict[str, Any] = {m: {k: named[f"{m}_{k}"] for k in self.keys[m]} if m in self.keys else named[m] for m in self.modalities}
        batch.update({f"{m}_lengths": named[f"{m}_lengths"] for m in self.lengths})
        batch["present"] = {m: named[f"present_{m}"] for m in self.modalities}
        return self.model(batch)


def _input_keys(encoder: nn.Module) -> tuple[str, ...]:
    """The keys of an encoder's dict input (empty for a tensor input), read off its example input
    without touching the global RNG (the caller's random inputs stay what they were)."""
    if not takes_raw(encoder):
        return ()
    with torch.random.fork_rng(devices=[]):
        x = encoder.example_input(1)
    return tuple(x) if isinstance(x, Mapping) else ()


def example_inputs(serving: ServingModel, batch_size: int = 3, shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[Tensor, ...]:
    """Inputs for tracing and checks: random inputs of ``shapes[m]`` (one sample's shape; default: the
    encoder's example input), full lengths, every modality present."""
    model = serving.model
    values: dict[str, Tensor] = {}
    for m in serving.modalities:
        example = model.encoders[m].example_input(batch_size)
        if m in serving.keys:  # a preprocessed dict (token ids and mask): the encoder's own example
            values.update({f"{m}_{k}": v for k, v in example.items()})
            continue
        if shapes and m in shapes:
            shape = (batch_size, *shapes[m])
            # token ids within the ids the encoder's own example uses (so within its vocabulary)
            example = torch.randn(shape) if example.is_floating_point() else torch.randint(1, int(example.max()) + 1, shape)
        values[m] = example
    for m in serving.lengths:
        values[f"{m}_lengths"] = torch.full((batch_size,), values[m].shape[-1], dtype=torch.long)
    for m in serving.modalities:
        values[f"present_{m}"] = torch.ones(batch_size, dtype=torch.bool)
    return tuple(values[name] for name in serving.input_names)


def _dynamic_shapes(serving: ServingModel, inputs: tuple[Tensor, ...]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes: list[dict[int, Any]] = []
    tokens = {f"{m}_{k}" for m in serving.keys for k in serving.keys[m]}
    for name, x in zip(serving.input_names, inputs):
        dims: dict[int, Any] = {0: batch}
        if name in serving.modalities and not x.is_floating_point():  # token ids: any length
            dims[x.dim() - 1] = torch.export.Dim.AUTO
        elif name in tokens and x.dim() == 2:  # a preprocessed sequence and its mask: any length the graph allows
            dims[1] = torch.export.Dim.AUTO
        shapes.append(dims)
    return tuple(shapes)


def export_program(model: MultimodalModel, shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[torch.export.ExportedProgram, ServingModel, tuple[Tensor, ...]]:
    serving = ServingModel(model)
    inputs = example_inputs(serving, shapes=shapes)
    with torch.no_grad():
        program = torch.export.export(serving, inputs, dynamic_shapes=(_dynamic_shapes(serving, inputs),))  # one entry: *inputs
    return program, serving, inputs


def export_pt2(model: MultimodalModel, out: str | Path, shapes: Mapping[str, Sequence[int]] | None = None) -> Path:
    """Write ``torch.export``'s program of ``model`` to ``out`` (load it with ``torch.export.load``)."""
    program, _, _ = export_program(model, shapes)
    with atomic_path(out) as tmp:  # torch.export.save wants the .pt2 suffix, which tmp keeps
        try:
            torch.export.save(program, tmp)
        except RuntimeError as e:  # its C++ writer reports a full or read-only disk as a RuntimeError with a C++ stack
            raise OSError(f"cannot write {out}: {str(e).splitlines()[0]}") from None
    return Path(out)


def export_onnx(model: MultimodalModel, out: str | Path, shapes: Mapping[str, Sequence[int]] | None = None) -> Path:
    """Write ``model`` as ONNX (opset 18, through ``torch.export``) with named, dynamic inputs."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the export extra: pip install 'fusionzoo[export]' ({e.name} is missing)") from None
    program, serving, _ = export_program(model, shapes)
    onnx_program = torch.onnx.export(program, dynamo=True, input_names=serving.input_names, output_names=["logits"], opset_version=18)
    with atomic_path(out) as tmp:
        onnx_program.save(str(tmp), external_data=False)
    return Path(out)


def check_onnx(path: str | Path, model: MultimodalModel, inputs: tuple[Tensor, ...]) -> float:
    """Largest absolute difference between ONNX Runtime and eager PyTorch on ``inputs``."""
    import onnxruntime

    serving = ServingModel(model)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(serving.input_names, inputs)}
    (onnx_out,) = session.run(["logits"], feed)
    with torch.no_grad():
        eager = serving(*inputs)
    return float((torch.from_numpy(onnx_out) - eager).abs().max())
