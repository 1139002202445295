"""Optional libraries, imported at first use: ``require("transformers")`` or one line naming the extra.

``import fusionzoo`` never imports them (``transformers`` alone takes seconds to import), and an
encoder whose library is missing is still listed: building it says which extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: Import name -> the ``fusionzoo[...]`` extra that installs it.
EXTRAS = {
    "transformers": "hf",
    "tokenizers": "hf",
    "peft": "hf",
    "timm": "timm",
    "open_clip": "clip",
    "onnx": "export",
    "onnxruntime": "export",
    "tensorboard": "track",
    "mlflow": "track",
    "optuna": "tune",
    "ray": "ray",
    "submitit": "slurm",
    "pyarrow": "data",
    "pandas": "data",
    "datasets": "data",
    "webdataset": "data",
}


class MissingExtraError(ImportError):
    """An optional library that is not installed; the message names the extra that installs it."""


def require(module: str, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'fusionzoo[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.partition(".")[0]
        extra = EXTRAS.get(top)
        install = f"pip install 'fusionzoo[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtraError(f"{what or top} needs the {top!r} library ({e}); install it with: {install}") from None
