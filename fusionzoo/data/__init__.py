"""Data: datasets (registered in ``DATASETS``), collation, the loader recipe and the text vocabulary."""

from fusionzoo.data import avdigits, features, hf, manifest, mnist, shards, synthetic
from fusionzoo.data.avdigits import AVDigits
from fusionzoo.data.collate import Frames, collate
from fusionzoo.data.features import FeatureDataset
from fusionzoo.data.frontend_cache import FrontendCache
from fusionzoo.data.loader import make_loader
from fusionzoo.data.manifest import ManifestDataset, from_dataframe
from fusionzoo.data.mnist import MNIST
from fusionzoo.data.shards import WebDataset, write_shards
from fusionzoo.data.synthetic import SyntheticTrimodal
from fusionzoo.vocab import PAD_ID, UNK_ID, Vocab, tokenize

__all__ = ["AVDigits", "FeatureDataset", "Frames", "FrontendCache", "MNIST", "ManifestDataset", "from_dataframe", "mnist", "features", "avdigits", "manifest", "PAD_ID", "UNK_ID", "SyntheticTrimodal", "Vocab", "WebDataset", "write_shards", "shards", "hf", "collate", "make_loader", "synthetic", "tokenize"]
