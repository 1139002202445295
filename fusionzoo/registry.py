"""One generic registry; ``ENCODERS``, ``FUSIONS``, ``HEADS``, ... are its instances.

An entry is a callable (usually an ``nn.Module`` class) plus metadata: the modality it reads, its
input kind (read from the class), the paper, free-form tags, and *example* keyword arguments that
build a small valid module for the tests and ``describe()``. ``create`` is "look the name up, call
it with the caller's keywords": the constructor's signature holds the user's defaults, as in timm,
and the example sizes never leak into a user's model.
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
    "OPTIMIZERS",
    "LOGGERS",
    "REGISTRIES",
    "closest",
    "check_kwargs",
    "accepted_kwargs",
    "required_kwargs",
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


def required_kwargs(fn: Callable[..., Any]) -> list[str]:
    """Keyword arguments ``fn`` needs and has no default for."""
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.default is inspect.Parameter.empty
    ]


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
    """A registered callable and what we know about it without building it.

    ``example_kwargs`` build a small valid instance (unequal per-modality sizes for fusion blocks):
    the registry-wide tests and ``describe()`` use them through :meth:`example`; :meth:`build` (what
    ``create_*`` calls) never does. ``role_args`` name constructor arguments that must be one of the
    block's modalities (FiLM's ``target``); ``num_modalities`` is the exact number of modalities it is
    built for (None: any); ``reference_kwargs`` override the shared benchmark configuration where it
    does not fit the block (tensor fusion's product of widths).
    """

    name: str
    fn: Callable[..., Any]
    kind: str
    example_kwargs: Mapping[str, Any] = field(default_factory=dict)
    modality: str | None = None
    input_kind: str | None = None
    paper: str | None = None
    tags: tuple[str, ...] = ()
    role_args: tuple[str, ...] = ()
    num_modalities: int | None = None
    reference_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def fit(self, in_dims: Mapping[str, int]) -> dict[str, Any]:
        """Keyword arguments that build this fusion block for (a subset of) ``in_dims``: the last
        ``num_modalities`` modalities in sorted order when the block takes a fixed number, and each role
        argument set to the last modality kept (``film``'s ``target``)."""
        names = sorted(in_dims)
        if self.num_modalities is not None:
            names = names[-self.num_modalities :]
        return {"in_dims": {m: in_dims[m] for m in names}, **{arg: names[-1] for arg in self.role_args}}

    @property
    def module(self) -> str:
        return _qualname(self.fn)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def build(self, **kwargs: Any) -> Any:
        """Call the constructor with exactly ``kwargs``; a missing required argument is a ``TypeError``
        naming it (with the example value)."""
        where = f"{self.kind} '{self.name}'"
        check_kwargs(self.fn, kwargs, where=where)
        missing = [k for k in required_kwargs(self.fn) if k not in kwargs]
        if missing:
            examples = ", ".join(f"{k}={self.example_kwargs[k]!r}" for k in missing if k in self.example_kwargs)
            raise TypeError(
                f"{where}: missing required argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                + (f" (for example {examples})" if examples else "")
            )
        return self.fn(**kwargs)

    def example(self, **overrides: Any) -> Any:
        """A small instance: ``example_kwargs`` updated with ``overrides`` (tests, ``describe()``)."""
        return self.build(**{**self.example_kwargs, **overrides})

    def describe(self) -> dict[str, Any]:
        """Metadata plus what building the example tells: parameter count and example input shape."""
        info: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "module": self.module,
            "summary": self.summary,
            "modality": self.modality,
            "input_kind": self.input_kind,
            "paper": self.paper,
            "tags": list(self.tags),
            "role_args": list(self.role_args),
            "num_modalities": self.num_modalities,
            "example_kwargs": dict(self.example_kwargs),
        }
        if self.kind in ("dataset", "optimizer"):  # building one reads data or needs parameters
            return info
        obj = self.example()
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

        @FUSIONS.register("concat_mlp", example_kwargs={"in_dims": {"a": 8, "b": 4}, "out_dim": 16})
        class ConcatMLPFusion(FusionBlock): ...

        FUSIONS.create("concat_mlp", in_dims={"audio": 128, "visual": 512}, out_dim=256)
        FUSIONS.get("concat_mlp").example()       # the small example instance
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        example_kwargs: Mapping[str, Any] | None = None,
        modality: str | None = None,
        paper: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        role_args: tuple[str, ...] | list[str] = (),
        num_modalities: int | None = None,
        reference_kwargs: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers a class or function under ``name``.

        The input kind of a fusion block is read from its class attribute ``input_kind``, and an
        encoder's modality from its class attribute ``modality`` unless ``modality`` is given.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty str, got {name!r}")

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(fn):
                raise TypeError(f"can only register a callable as {self.kind} '{name}', got {fn!r}")
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered by {self._entries[name].module}; "
                    f"cannot register {_qualname(fn)} under the same name"
                )
            input_kind = getattr(fn, "input_kind", None) if isinstance(fn, type) else None
            if input_kind is not None and input_kind not in INPUT_KINDS:
                raise ValueError(f"{_qualname(fn)}.input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
            own_modality = getattr(fn, "modality", None) if isinstance(fn, type) else None
            examples = dict(example_kwargs or {})
            check_kwargs(fn, examples, where=f"{self.kind} '{name}' example_kwargs")
            check_kwargs(fn, dict.fromkeys(role_args), where=f"{self.kind} '{name}' role_args")
            self._entries[name] = Entry(
                name=name,
                fn=fn,
                kind=self.kind,
                example_kwargs=examples,
                modality=modality or (own_modality if isinstance(own_modality, str) else None),
                input_kind=input_kind,
                paper=paper,
                tags=tuple(tags),
                role_args=tuple(role_args),
                num_modalities=num_modalities,
                reference_kwargs=dict(reference_kwargs or {}),
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
        """Build ``name`` with exactly ``kwargs`` (the constructor's own defaults for the rest)."""
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
OPTIMIZERS = Registry("optimizer")
LOGGERS = Registry("logger")

REGISTRIES: dict[str, Registry] = {
    "encoders": ENCODERS,
    "fusions": FUSIONS,
    "heads": HEADS,
    "models": MODELS,
    "datasets": DATASETS,
    "losses": LOSSES,
    "optimizers": OPTIMIZERS,
    "loggers": LOGGERS,
}
