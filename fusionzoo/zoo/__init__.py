"""The shipped pretrained models.

Every folder here is a saved model in the :mod:`fusionzoo.hub` layout (config, weights, model card),
registered in ``MODELS`` under its folder name: ``fz.create_model("avdigits_concat_hard",
pretrained=True)`` loads it offline, ``pretrained=False`` builds the same architecture with fresh
weights. ``make pretrained`` (``benchmarks/make_pretrained.py``) trains every one again from its
config and rewrites its folder, so the weights never drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fusionzoo.config import build_model, load_config
from fusionzoo.hub import from_pretrained, is_pretrained_folder, read_card
from fusionzoo.models.multimodal import MultimodalModel
from fusionzoo.registry import MODELS

__all__ = ["ROOT", "shipped", "headline"]

ROOT = Path(__file__).parent


def shipped() -> list[str]:
    """Names of the shipped models (their folders)."""
    return sorted(p.name for p in ROOT.iterdir() if is_pretrained_folder(p))


def headline(name: str) -> str:
    """``"accuracy 96.4% (avdigits test)"``: a shipped model's headline test metric ("-" for another name)."""
    card = _CARDS.get(name)
    if card is None:
        return "-"
    value = card["test"][card["metric"]]
    shown = f"{100 * value:.1f}%" if card["metric"] in ("accuracy", "mAP", "micro_f1") else f"{value:.4f}"
    return f"{card['metric']} {shown} ({card['data'].get('name')} test)"


def _factory(folder: Path, card: dict) -> Callable[..., MultimodalModel]:
    def create(*, pretrained: bool = False) -> MultimodalModel:
        if pretrained:
            return from_pretrained(folder)
        return build_model(load_config(folder / "config.yaml"))

    create.__name__ = create.__qualname__ = folder.name
    create.__module__ = __name__
    create.__doc__ = (
        f"{card['task']} model over {', '.join(card['modalities'])} trained on {card['data'].get('name')}; "
        "pretrained=True loads the shipped weights."
    )
    create.pretrained_folder = folder  # type: ignore[attr-defined]  (fusionzoo.hub.from_pretrained reads it)
    return create


#: The shipped models' cards, read once at import.
_CARDS = {name: read_card(ROOT / name) for name in shipped()}

for _name, _card in _CARDS.items():
    MODELS.register(_name, modality="+".join(_card["modalities"]), tags=("pretrained", _card["task"], _card["data"].get("name", "")))(
        _factory(ROOT / _name, _card)
    )
