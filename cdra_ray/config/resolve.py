"""Config -> (registry entry, checked options) for each concept chosen by name; torch-free.

An options class's field takes its value from the config key of the same name in the concept's section, unless
the class's ``CONFIG_KEYS`` names another key (a dotted key, a tuple of keys where the first non-null wins, or a
function of the config); ``<section>.options`` / ``algorithm.advantage_options`` set any field by name (the way to
configure a kind the schema has no key for). Every failure is a :class:`~cdra_ray.registry.RegistryError` naming
the key and listing the valid choices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cdra_ray.registry import Entry, Registry, RegistryError

_MISSING = object()


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _source(config, source):
    if callable(source):
        return source(config)
    if isinstance(source, tuple):
        for key in source:
            value = _lookup(config, key)
            if value is not _MISSING and value is not None:
                return value
        return _MISSING
    return _lookup(config, source)


def gather(options_cls: type, config, section: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values of ``options_cls``'s fields found in ``config`` (missing ones keep the class default)."""
    sources = getattr(options_cls, "CONFIG_KEYS", {})
    values = {}
    for f in dataclasses.fields(options_cls):
        value = _source(config, sources.get(f.name, f"{section}.{f.name}"))
        if value is not _MISSING:
            values[f.name] = value
    values.update(extra or {})
    return values


def resolve(registry: Registry, name: str, config, section: str, extra: Mapping[str, Any] | None = None,
            extra_key: str | None = None) -> tuple[Entry, Any]:
    entry = registry.entry(name)
    known = {f.name for f in dataclasses.fields(entry.options)}
    for key in extra or {}:
        if key not in known:
            raise RegistryError(f"{extra_key or section + '.options'}.{key}: unknown option of {registry.what} "
                                f"{name!r}; valid: {', '.join(sorted(known)) or '(none)'}")
    try:
        return entry, registry.options(name, gather(entry.options, config, section, extra), key=section)
    except RegistryError as err:
        detail = getattr(err, "detail", None)
        if detail is None:
            raise
        key = _key_of(detail.split()[0].split("=")[0], entry.options, config, section, extra_key)
        raise RegistryError(f"{key}: {detail} ({registry.what} {name!r})") from None


def _key_of(word: str, options_cls: type, config, section: str, extra_key: str | None) -> str:
    """The config key an options error is about (``word``: the option or key named first in the message)."""
    source = getattr(options_cls, "CONFIG_KEYS", {}).get(word)
    if isinstance(source, tuple):
        source = source[0]
    if isinstance(source, str):
        return source
    if _lookup(config, f"{section}.{word}") is not _MISSING:
        return f"{section}.{word}"
    return f"{extra_key or section + '.options'}.{word}"


def advantage(config) -> tuple[Entry, Any]:
    from cdra_ray.algorithms.catalog import ADVANTAGES

    a = config.algorithm
    return resolve(ADVANTAGES, a.advantage, config, "algorithm", a.advantage_options, "algorithm.advantage_options")


def aggregation(config) -> Entry:
    from cdra_ray.algorithms.catalog import AGGREGATIONS

    return AGGREGATIONS.entry(config.algorithm.aggregation)


def reward(config) -> tuple[Entry, Any]:
    from cdra_ray.rewards.catalog import REWARDS

    return resolve(REWARDS, config.reward.kind, config, "reward", config.reward.options, "reward.options")


def engine(config, section: str) -> Entry:
    from cdra_ray.engines.catalog import ENGINE_KINDS, ENGINES

    kind = getattr(config, section).engine
    if kind not in ENGINES:
        raise RegistryError(f"{section}.engine={kind!r}: unknown engine kind; valid kinds: {', '.join(ENGINE_KINDS)}")
    return ENGINES.entry(kind)


def check_every_kind(config) -> None:
    """Check the options every built-in estimator and reward kind would take from this config."""
    from cdra_ray.algorithms.catalog import ADVANTAGES
    from cdra_ray.rewards.catalog import REWARDS

    for registry, section in ((ADVANTAGES, "algorithm"), (REWARDS, "reward")):
        for name in registry.names():
            resolve(registry, name, config, section)
