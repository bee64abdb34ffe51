"""A registry of named implementations, each with a typed options dataclass; importable without torch.

An entry maps a name to its options class (a dataclass whose ``__post_init__`` checks the bounds) and to its
implementation, either an object or the import path ``"package.module:attr"`` loaded on first use, so a config can
be checked against every registered name and option without importing torch, vLLM or a model::

    ADVANTAGES = Registry("algorithm.advantage", "advantage estimator")
    ADVANTAGES.register("cdpa", CdpaOptions, "cdra_ray.algorithms.advantages:cdpa_advantages")
    options = ADVANTAGES.options("cdpa", {"normalize": "pooled"})   # CdpaOptions, checked
    fn = ADVANTAGES.load("cdpa")                                        # imports the implementation now

Errors are :class:`RegistryError` (a ``ValueError``) naming the config key and listing the valid choices.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name or a bad option; the message names the config key and the valid choices."""


@dataclass(frozen=True)
class NoOptions:
    """Options of an entry that has none."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    options: type  # a dataclass
    target: Any  # the implementation, or "package.module:attr"
    traits: Mapping[str, Any] = field(default_factory=dict)  # e.g. needs_engine for reward kinds

    def load(self) -> T:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def create(self, options, *args, **kwargs):
        """Call the implementation with ``args``, ``kwargs`` and every field of ``options`` as keywords."""
        if not isinstance(options, self.options):
            raise TypeError(f"{self.name}: options must be {self.options.__name__}, got {type(options).__name__}")
        return self.load()(*args, **kwargs, **options_dict(options))


def _same(path, target) -> bool:
    """``path`` is the import path of ``target`` (a lazy catalog entry being replaced by its own implementation)."""
    where = f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', '')}"
    return isinstance(path, str) and path == where


def options_dict(options) -> dict[str, Any]:
    """The fields of an options dataclass as keywords (shallow: nested values are passed as they are)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


class Registry(Generic[T]):
    """Names -> (options class, implementation) for one concept; ``key`` is the config key that selects one."""

    def __init__(self, key: str, what: str) -> None:
        self.key, self.what = key, what
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, options: type = NoOptions, target: Any = None, **traits) -> Entry[T]:
        """Add ``name``; registering the same name again with a different target is an error."""
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"{self.what} {name!r}: options must be a dataclass, got {options!r}")
        entry = Entry(name, options, target, dict(traits))
        old = self._entries.get(name)
        if old is not None and (old.target, old.options) != (target, options) and not _same(old.target, target):
            raise RegistryError(f"{self.what} {name!r} is already registered ({old.target!r})")
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        """The implementation registered as ``name`` (imported now)."""
        return self.load(name)

    def pop(self, name: str, *default):
        entry = self._entries.pop(name, None)
        if entry is None:
            if default:
                return default[0]
            raise KeyError(name)
        return entry

    __delitem__ = pop

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise RegistryError(f"{self.key}={name!r}: unknown {self.what} {name!r}; "
                                f"valid {self.what.split()[-1]}s: {', '.join(self.names())}")
        return self._entries[name]

    def load(self, name: str) -> T:
        return self.entry(name).load()

    def options(self, name: str, values: Mapping[str, Any] | None = None, *, key: str | None = None):
        """The checked options of ``name`` from ``values`` (missing fields take the class defaults).

        An unknown option or a value its ``__post_init__`` refuses raises :class:`RegistryError` naming
        ``key`` (default ``<self.key's section>.<option>``)."""
        entry = self.entry(name)
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(entry.options)}
        unknown = sorted(set(values) - known)
        prefix = key or self.key.rpartition(".")[0]
        if unknown:
            raise RegistryError(f"{prefix}.{unknown[0]}: unknown option of {self.what} {name!r}; "
                                f"valid: {', '.join(sorted(known)) or '(none)'}")
        try:
            return entry.options(**values)
        except (TypeError, ValueError) as err:
            error = RegistryError(f"{prefix}: {self.what} {name!r}: {err}")
            error.detail = str(err)
            raise error from None

    def create(self, name: str, options=None, *args, **kwargs):
        entry = self.entry(name)
        return entry.create(options if options is not None else self.options(name), *args, **kwargs)


# ------------------------------------------------------------------------------------ checks for __post_init__
def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number in the given interval."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def options_from_signature(fn, exclude=("eps",)) -> type:
    """An options dataclass made from the keyword-only parameters (with defaults) of ``fn``."""
    import inspect

    specs = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in exclude:
            if p.default is inspect.Parameter.empty:
                specs.append((p.name, Any))
            else:
                specs.append((p.name, Any, field(default=p.default)))
    specs.sort(key=lambda s: len(s) == 3)  # fields without a default first
    return dataclasses.make_dataclass(f"{getattr(fn, '__name__', 'fn').title()}Options", specs, frozen=True)


def lazy_exports(package: str, exports: Mapping[str, str]):
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) on first use of ``name``, so a
    package can list its public names without importing torch-heavy submodules up front."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
