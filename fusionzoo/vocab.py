"""A small word-level vocabulary: build, encode to padded ids, save and load as JSON.

Id 0 is padding and id 1 the unknown word. No torchtext, no ``transformers``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from fusionzoo.atomic import write_text_atomic

__all__ = ["Vocab", "tokenize", "vocabularies_of", "PAD_ID", "UNK_ID"]

PAD_ID = 0
UNK_ID = 1
PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?|\S")  # letters and digits of any script, then any other single mark


def tokenize(text: str, lower: bool = True) -> list[str]:
    """Words, numbers and single punctuation marks, in any script: ``"Don't stop!" -> ["don't",
    "stop", "!"]``, ``"Grüße, Zoë" -> ["grüße", ",", "zoë"]``."""
    return _WORD.findall(text.lower() if lower else text)


class Vocab:
    """Word <-> id mapping with ``<pad>`` = 0 and ``<unk>`` = 1.

    Example::

        vocab = Vocab.build(["a red circle", "a blue square"], min_freq=1)
        ids = vocab.encode(["a red square", "blue"])   # LongTensor [2, 3], padded with 0
    """

    def __init__(self, words: Sequence[str], lower: bool = True) -> None:
        if list(words[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {list(words[:2])}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.itos = list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.lower = lower

    @classmethod
    def build(
        cls, texts: Iterable[str], *, min_freq: int = 1, max_size: int | None = None, lower: bool = True
    ) -> Vocab:
        """Most frequent words first (ties alphabetical), those seen at least ``min_freq`` times,
        at most ``max_size`` words including the two specials."""
        counts = Counter(w for t in texts for w in tokenize(t, lower))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            if max_size < 2:
                raise ValueError(f"max_size must leave room for {PAD!r} and {UNK!r}, got {max_size}")
            words = words[: max_size - 2]
        return cls([PAD, UNK, *words], lower=lower)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def ids(self, text: str) -> list[int]:
        return [self.stoi.get(w, UNK_ID) for w in tokenize(text, self.lower)]

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """``LongTensor [b, l]`` padded with 0 to the longest text (at least 1 column). With
        ``max_length``, longer texts are cut to it, explicitly: without it nothing is truncated."""
        rows = [self.ids(t) for t in texts]
        if max_length is not None:
            rows = [r[:max_length] for r in rows]
        width = max([len(r) for r in rows] + [1])
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in (ids.tolist() if isinstance(ids, Tensor) else ids) if i != PAD_ID)

    def save(self, path: str | Path) -> None:
        """Write ``{"lower": ..., "itos": [...]}`` as JSON, atomically (temp file + rename)."""
        write_text_atomic(path, json.dumps({"lower": self.lower, "itos": self.itos}))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        data = json.loads(Path(path).read_text())
        return cls(data["itos"], lower=data.get("lower", True))


def vocabularies_of(fitted: dict | None) -> dict[str, Vocab]:
    """The word vocabularies (modality -> :class:`Vocab`) a dataset's fitted state holds (a run's
    ``data_state.json``); ``{}`` without any."""
    return {m: Vocab(v["itos"], lower=v.get("lower", True)) for m, v in ((fitted or {}).get("vocabs") or {}).items()}
