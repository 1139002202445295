"""Data: the text vocabulary (datasets and collation arrive with the data issue)."""

from fusionzoo.data.text import PAD_ID, UNK_ID, Vocab, tokenize

__all__ = ["PAD_ID", "UNK_ID", "Vocab", "tokenize"]
