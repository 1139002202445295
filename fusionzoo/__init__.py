"""fusionzoo: a multimodal fusion model zoo for PyTorch.

The public face: ``create_X``, ``list_X``, ``register_X`` and ``get_X_info`` for X in encoder,
fusion, head, model, dataset, loss, optimizer and logger; ``load_config``, ``build_model`` and
``from_pretrained`` (a saved folder, a run folder or a shipped model's name).

``create_X(name, **kwargs)`` calls the constructor with exactly ``kwargs``: its signature holds the
defaults (``create_encoder("resnet18")`` is torchvision's resnet18 trunk at its native 512 width).
The small sizes the tests use are the entries' ``example_kwargs``: ``FUSIONS.get(name).example()``.
"""

from fusionzoo import data, encoders, fusion, losses, models, optim  # noqa: F401  (imports register the entries)
from fusionzoo.training import loggers  # noqa: F401  (registers the experiment trackers)
from fusionzoo.config import ExperimentConfig, build_model, load_config
from fusionzoo.encoders.base import Encoder
from fusionzoo.errors import ConfigError
from fusionzoo.fusion.base import FusionBlock
from fusionzoo.hub import from_pretrained
from fusionzoo.training.explain import explain
from fusionzoo.models.alignment import AlignmentModel
from fusionzoo.models.multimodal import MultimodalModel
from fusionzoo.registry import (
    DATASETS,
    ENCODERS,
    FUSIONS,
    HEADS,
    LOGGERS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    REGISTRIES,
    Registry,
)

from fusionzoo import zoo  # noqa: E402,F401  (registers the shipped pretrained models in MODELS)

__version__ = "0.1.0"

create_encoder = ENCODERS.create
list_encoders = ENCODERS.list
register_encoder = ENCODERS.register

create_fusion = FUSIONS.create
list_fusions = FUSIONS.list
register_fusion = FUSIONS.register

create_head = HEADS.create
list_heads = HEADS.list
register_head = HEADS.register

create_model = MODELS.create
list_models = MODELS.list
register_model = MODELS.register

create_dataset = DATASETS.create
list_datasets = DATASETS.list
register_dataset = DATASETS.register

create_loss = LOSSES.create
list_losses = LOSSES.list
register_loss = LOSSES.register

create_optimizer = OPTIMIZERS.create
list_optimizers = OPTIMIZERS.list
register_optimizer = OPTIMIZERS.register

create_logger = LOGGERS.create
list_loggers = LOGGERS.list
register_logger = LOGGERS.register


def get_encoder_info(name: str) -> dict:
    """Metadata of a registered encoder, plus parameter count and input shape of its example instance."""
    return ENCODERS.get(name).describe()


def get_fusion_info(name: str) -> dict:
    """Metadata of a registered fusion block, plus parameter count and input shape of its example instance."""
    return FUSIONS.get(name).describe()


def get_head_info(name: str) -> dict:
    """Metadata of a registered head, plus parameter count and input shape of its example instance."""
    return HEADS.get(name).describe()


def get_model_info(name: str) -> dict:
    """Metadata of a registered model, plus parameter count of its example instance."""
    return MODELS.get(name).describe()


def get_dataset_info(name: str) -> dict:
    """Metadata of a registered dataset."""
    return DATASETS.get(name).describe()


def get_loss_info(name: str) -> dict:
    """Metadata of a registered loss."""
    return LOSSES.get(name).describe()


def get_optimizer_info(name: str) -> dict:
    """Metadata of a registered optimizer."""
    return OPTIMIZERS.get(name).describe()


def get_logger_info(name: str) -> dict:
    """Metadata of a registered experiment tracker (``train.loggers``)."""
    return LOGGERS.get(name).describe()


KINDS = ("encoder", "fusion", "head", "model", "dataset", "loss", "optimizer", "logger")

__all__ = [
    "AlignmentModel",
    "ConfigError",
    "DATASETS",
    "ENCODERS",
    "Encoder",
    "ExperimentConfig",
    "FUSIONS",
    "FusionBlock",
    "HEADS",
    "LOGGERS",
    "LOSSES",
    "MODELS",
    "MultimodalModel",
    "OPTIMIZERS",
    "Registry",
    "__version__",
    "build_model",
    "explain",
    "from_pretrained",
    "load_config",
    *(f"{verb}_{kind}" for kind in KINDS for verb in ("create", "register")),
    *(f"get_{kind}_info" for kind in KINDS),
    *(f"list_{plural}" for plural in REGISTRIES),
]
