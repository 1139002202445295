"""One generic registry; ``ENCODERS``, ``FUSIONS``, ``HEADS``, ... are its instances.

An entry is a callable (usually an ``nn.Module`` class) plus metadata: the default keyword
arguments that build a small valid module, the modality it reads, its input kind, the paper
and free-form tags. ``create`` is "look the name up, merge the defaults, call it".
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Entry",
    "Registry",
    "ENCODERS",
    "FUSIONS",
    "HEADS",
    "MODELS",
    "DATASETS",
    "LOSSES",
    "REGISTRIES",
    "closest",
    "check_kwargs",
]

INPUT_KINDS = ("pooled", "tokens")


def closest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The ``n`` known names closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def accepted_kwargs(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Names ``fn`` takes as keywords, and whether it also takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Raise ``TypeError`` for a keyword ``fn`` does not take, suggesting the closest one."""
    names, var_kw = accepted_kwargs(fn)
    if var_kw:
        return
    for key in kwargs:
        if key not in names:
            hint = closest(key, sorted(names), n=1)
            did_you_mean = f"; did you mean {hint[0]}?" if hint else ""
            raise TypeError(f"{where}.{key}: unknown argument{did_you_mean} (accepted: {', '.join(sorted(names))})")


@dataclass(frozen=True)
class Entry:
    """A registered callable and what we know about it without building it."""

    name: str
    fn: Callable[..., Any]
    kind: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    modality: str | None = None
    input_kind: str | None = None
    paper: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return _qualname(self.fn)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def build(self, **kwargs: Any) -> Any:
        check_kwargs(self.fn, kwargs, where=f"{self.kind} '{self.name}'")
        return self.fn(**{**self.defaults, **kwargs})

    def describe(self) -> dict[str, Any]:
        """Metadata plus what building the defaults tells: parameter count and example input shape."""
        info: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "module": self.module,
            "summary": self.summary,
            "modality": self.modality,
            "input_kind": self.input_kind,
            "paper": self.paper,
            "tags": list(self.tags),
            "defaults": dict(self.defaults),
        }
        if self.kind == "dataset":  # building one reads or generates data: describe without it
            return info
        obj = self.build()
        if hasattr(obj, "parameters"):
            info["num_params"] = sum(p.numel() for p in obj.parameters())
        if hasattr(obj, "example_input"):
            info["example_input_shape"] = _shapes(obj.example_input(batch_size=2))
        if hasattr(obj, "out_dim"):
            info["out_dim"] = obj.out_dim
        return info


def _shapes(x: Any) -> Any:
    if hasattr(x, "shape"):
        return tuple(x.shape)
    if isinstance(x, Mapping):
        return {k: _shapes(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_shapes(v) for v in x)
    return x


class Registry:
    """A name -> :class:`Entry` table with decorator registration.

    Example::

        FUSIONS = Registry("fusion")

        @FUSIONS.register("concat_mlp", defaults={"in_dims": {"a": 8, "b": 4}, "out_dim": 16})
        class ConcatMLPFusion(FusionBlock): ...

        FUSIONS.create("concat_mlp", out_dim=32)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        defaults: Mapping[str, Any] | None = None,
        modality: str | None = None,
        input_kind: str | None = None,
        paper: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers a class or function under ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty str, got {name!r}")
        if input_kind is not None and input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(fn):
                raise TypeError(f"can only register a callable as {self.kind} '{name}', got {fn!r}")
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered by {self._entries[name].module}; "
                    f"cannot register {_qualname(fn)} under the same name"
                )
            if defaults:
                check_kwargs(fn, defaults, where=f"{self.kind} '{name}' defaults")
            self._entries[name] = Entry(
                name=name,
                fn=fn,
                kind=self.kind,
                defaults=dict(defaults or {}),
                modality=modality,
                input_kind=input_kind,
                paper=paper,
                tags=tuple(tags),
            )
            return fn

        return decorator

    def unregister(self, name: str) -> Entry:
        """Remove and return an entry (tests and interactive sessions)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            hint = closest(name, sorted(self._entries))
            msg = f"unknown {self.kind} '{name}'"
            msg += f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else f"; known: {', '.join(sorted(self._entries)) or 'none'}"
            raise KeyError(msg) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build ``name`` with its defaults overridden by ``kwargs``."""
        return self.get(name).build(**kwargs)

    def list(self, pattern: str = "*", *, modality: str | None = None, tag: str | None = None) -> list[str]:
        """Sorted names matching an fnmatch ``pattern`` (and a modality / tag when given)."""
        return sorted(
            name
            for name, entry in self._entries.items()
            if fnmatch.fnmatchcase(name, pattern)
            and (modality is None or entry.modality == modality)
            and (tag is None or tag in entry.tags)
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


ENCODERS = Registry("encoder")
FUSIONS = Registry("fusion")
HEADS = Registry("head")
MODELS = Registry("model")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")

REGISTRIES: dict[str, Registry] = {
    "encoders": ENCODERS,
    "fusions": FUSIONS,
    "heads": HEADS,
    "models": MODELS,
    "datasets": DATASETS,
    "losses": LOSSES,
}
