"""Text encoders over right-padded token ids (0 = padding): bag of embeddings, (bi)LSTM/GRU, transformer.

Legend: ``b`` batch, ``l`` tokens, ``e`` embedding width, ``h`` hidden width, ``d`` features.

Every encoder ignores padding in its pooling, and a row that is all padding encodes to zeros
(never NaN), so it behaves like a missing text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusionzoo.vocab import PAD_ID, Vocab
from fusionzoo.encoders.base import Encoder
from fusionzoo.layers.masking import masked_max, masked_mean
from fusionzoo.layers.validation import check_positive_int, check_range, check_tensor
from fusionzoo.registry import ENCODERS

__all__ = ["TextEmbeddingEncoder", "TextLSTMEncoder", "TextTransformerEncoder", "attach_vocabularies", "load_word_vectors"]


def load_word_vectors(embedding: nn.Embedding, path: str | Path, vocab: Vocab | None = None) -> dict[str, int]:
    """Copy pretrained vectors into ``embedding``; returns ``{"found", "total", "dim"}``.

    ``path`` is a ``.pt`` tensor ``[vocab_size, e]`` in vocabulary order, or a GloVe-style text file
    (``word v_1 ... v_e`` per line), which needs ``vocab`` to map words to ids. Words without a
    vector keep their initialisation; the padding row stays zero.
    """
    path = Path(path)
    weight = embedding.weight
    total, dim = weight.shape
    if path.suffix == ".pt":
        vectors = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(vectors, Tensor) or tuple(vectors.shape) != (total, dim):
            got = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
            raise ValueError(f"text: {path} must hold a tensor of shape {(total, dim)}, got {got}")
        with torch.no_grad():
            weight.copy_(vectors)
            weight[PAD_ID].zero_()
        return {"found": total - 1, "total": total, "dim": dim}
    if vocab is None:
        raise ValueError("text: loading a GloVe-style text file needs the vocab to map words to ids")
    if len(vocab) != total:
        raise ValueError(f"text: vocab has {len(vocab)} words but the embedding has {total} rows")
    found = 0
    with path.open(encoding="utf-8") as f, torch.no_grad():
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            if len(parts) - 1 != dim:
                raise ValueError(f"text: {path}:{n} has {len(parts) - 1} values, the embedding width is {dim}")
            idx = vocab.stoi.get(parts[0])
            if idx is not None and idx != PAD_ID:
                weight[idx] = torch.tensor([float(v) for v in parts[1:]], dtype=weight.dtype)
                found += 1
    return {"found": found, "total": total, "dim": dim}


class _TextEncoder(Encoder):
    modality = "text"
    vocab_size: int
    embedding: nn.Embedding
    #: The word vocabulary its ids index: preprocessing state fitted on the training split (the
    #: dataset applies it in training; the engine, ``load_run`` and ``from_pretrained`` attach it, so
    #: ``preprocess`` turns strings into the ids the model was trained on). None until attached.
    vocab: Vocab | None = None

    def preprocess(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """``long [b, l]`` ids of ``texts`` in the attached vocabulary (0-padded; ``max_length`` cuts, explicitly)."""
        if self.vocab is None:
            raise ValueError(
                f"{self.modality}: {type(self).__name__} has no vocabulary attached: it is fitted on a training split "
                "(a trained run or saved folder carries it); attach one with encoder.vocab = Vocab.build(texts)"
            )
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{self.modality}: sample {i} is {type(t).__name__}, expected a string")
        if len(self.vocab) > self.vocab_size:
            raise ValueError(f"{self.modality}: the vocabulary has {len(self.vocab)} words, more than vocab_size={self.vocab_size}")
        return self.vocab.encode(list(texts), max_length)

    def _check(self, ids: Tensor) -> Tensor:
        check_tensor(ids, name="text", shape=("B", "L"), dtype="int", what="token ids")
        check_range(ids, 0, self.vocab_size - 1, what="text: token ids", expected=f"[0, {self.vocab_size}) (vocab_size)")
        return ids != PAD_ID

    def load_word_vectors(self, path: str | Path, vocab: Vocab | None = None) -> dict[str, int]:
        """See :func:`load_word_vectors`."""
        return load_word_vectors(self.embedding, path, vocab)

    def example_input(self, batch_size: int = 2) -> Tensor:
        ids = torch.randint(2, self.vocab_size, (batch_size, 12))
        lengths = torch.randint(1, 13, (batch_size,))
        lengths[0] = 12
        return torch.where(torch.arange(12) < lengths.unsqueeze(1), ids, PAD_ID)


def attach_vocabularies(encoders: Mapping[str, nn.Module], vocabs: Mapping[str, Vocab]) -> list[str]:
    """Give each word-level text encoder the vocabulary of its modality (its preprocessing state);
    returns the modalities that got one."""
    attached = []
    for m, encoder in encoders.items():
        if isinstance(encoder, _TextEncoder) and m in vocabs:
            encoder.vocab = vocabs[m]
            attached.append(m)
    return attached


def _zero_empty_rows(out: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.any(dim=1, keepdim=True), out, 0.0)


@ENCODERS.register(
    "text_embedding",
    example_kwargs={"vocab_size": 100, "embed_dim": 16, "out_dim": 32},
    modality="text",
    tags=("bag-of-words",),
)
class TextEmbeddingEncoder(_TextEncoder):
    """Embedding, masked mean over the non-padding tokens, projection to ``out_dim``.

    Shapes: ids ``long [b, l]`` -> ``[b, out_dim]``; tokens ``[b, l, out_dim]`` with mask ``[b, l]``.
    """

    def __init__(self, *, vocab_size: int = 30_000, out_dim: int = 128, embed_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = check_positive_int(vocab_size, name="vocab_size", where="TextEmbeddingEncoder")
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="TextEmbeddingEncoder")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(embed_dim, out_dim)

    def forward(self, ids: Tensor) -> Tensor:
        mask = self._check(ids)
        pooled = masked_mean(self.dropout(self.embedding(ids)), mask, dim=1)
        return _zero_empty_rows(self.proj(pooled), mask)

    def forward_tokens(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        mask = self._check(ids)
        return self.proj(self.dropout(self.embedding(ids))), mask


RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("last", "mean", "max")


@ENCODERS.register(
    "text_lstm",
    example_kwargs={"vocab_size": 100, "embed_dim": 16, "hidden_dim": 16, "out_dim": 32},
    modality="text",
    tags=("rnn",),
)
class TextLSTMEncoder(_TextEncoder):
    """Embedding, a (bi)LSTM or GRU over packed sequences (lengths from the padding), pooling
    (``last`` hidden state of each direction, masked ``mean`` or ``max``), projection to ``out_dim``.

    Padding never enters the recurrence, so a padded row equals the same row unpadded.

    Shapes: ids ``long [b, l]`` -> ``[b, out_dim]``; tokens ``[b, l, out_dim]`` with mask ``[b, l]``.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 30_000,
        out_dim: int = 256,
        embed_dim: int = 300,
        hidden_dim: int = 256,
        num_layers: int = 1,
        bidirectional: bool = True,
        rnn: str = "lstm",
        pooling: str = "last",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if rnn not in RNNS:
            raise ValueError(f"text: rnn must be one of {sorted(RNNS)}, got {rnn!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"text: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.vocab_size = check_positive_int(vocab_size, name="vocab_size", where="TextLSTMEncoder")
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="TextLSTMEncoder")
        self.pooling = pooling
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.rnn = RNNS[rnn](
            embed_dim, hidden_dim, num_layers=num_layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        width = hidden_dim * (2 if bidirectional else 1)
        self.proj = nn.Linear(width, out_dim)

    def _run(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = self._check(ids)
        length = ids.shape[1]
        if length == 0:  # no tokens at all: one padding column, so the RNN has a step to run
            ids = ids.new_full((ids.shape[0], 1), PAD_ID)
        # pack_padded_sequence needs the lengths on the CPU; empty rows run one (masked-out) step.
        lengths = (ids != PAD_ID).sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        steps, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        steps = steps[:, :length]
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.bidirectional else h_n[-1]
        return steps, last, mask

    def forward(self, ids: Tensor) -> Tensor:
        steps, last, mask = self._run(ids)
        if self.pooling == "last":
            pooled = last
        elif self.pooling == "mean":
            pooled = masked_mean(steps, mask, dim=1)
        else:
            pooled = masked_max(steps, mask, dim=1)
        return _zero_empty_rows(self.proj(pooled), mask)

    def forward_tokens(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        steps, _, mask = self._run(ids)
        return self.proj(steps), mask


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The fixed sin/cos position table of Vaswani et al.: ``[length, dim]``."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


@ENCODERS.register(
    "text_transformer",
    example_kwargs={"vocab_size": 100, "embed_dim": 16, "num_heads": 2, "depth": 1, "out_dim": 32, "max_length": 64},
    modality="text",
    paper="https://arxiv.org/abs/1706.03762",
    tags=("transformer",),
)
class TextTransformerEncoder(_TextEncoder):
    """Embedding + learned or sinusoidal positions + a CLS token + ``nn.TransformerEncoder`` with a
    key padding mask (PyTorch's SDPA path), pooled by masked ``mean`` over the tokens or by ``cls``.

    The CLS token is always attendable, so an all-padding row cannot produce NaN. Inputs longer than
    ``max_length`` raise rather than being cut.

    Shapes: ids ``long [b, l]`` (``l <= max_length``) -> ``[b, out_dim]``; tokens ``[b, l, out_dim]``.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 30_000,
        out_dim: int = 128,
        embed_dim: int = 128,
        num_heads: int = 4,
        depth: int = 2,
        mlp_ratio: float = 4.0,
        max_length: int = 512,
        positions: str = "learned",
        pooling: str = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"text: positions must be 'learned' or 'sinusoidal', got {positions!r}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"text: pooling must be 'mean' or 'cls', got {pooling!r}")
        self.vocab_size = check_positive_int(vocab_size, name="vocab_size", where="TextTransformerEncoder")
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="TextTransformerEncoder")
        self.max_length = max_length
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        if positions == "learned":
            self.positions = nn.Parameter(0.02 * torch.randn(max_length, embed_dim))
        else:
            self.register_buffer("positions", sinusoidal_positions(max_length, embed_dim), persistent=False)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, embed_dim))
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)
        self.proj = nn.Linear(embed_dim, out_dim)

    def _run(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = self._check(ids)
        if ids.shape[1] > self.max_length:
            raise ValueError(f"text: got {ids.shape[1]} tokens, more than max_length={self.max_length}")
        x = self.embedding(ids) + self.positions[: ids.shape[1]]
        x = torch.cat([self.cls.expand(ids.shape[0], -1, -1), x], dim=1)
        keep = F.pad(mask, (1, 0), value=True)
        x = self.transformer(x, src_key_padding_mask=~keep)
        return x, mask

    def forward(self, ids: Tensor) -> Tensor:
        x, mask = self._run(ids)
        pooled = x[:, 0] if self.pooling == "cls" else masked_mean(x[:, 1:], mask, dim=1)
        return _zero_empty_rows(self.proj(pooled), mask)

    def forward_tokens(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        x, mask = self._run(ids)
        return self.proj(x[:, 1:]), mask
