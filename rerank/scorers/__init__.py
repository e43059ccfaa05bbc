"""Scoring modes: how a prompt's passages are turned into a ranking (``RerankerConfig.scoring``).

Each mode is one :class:`~rerank.scorers.base.Scorer` subclass in its own module; the registry below
maps the ``scoring=`` name to it. Adding a mode is one new module plus one line here. Modules are
imported on first use, so this registry is cheap to import from configuration code.
"""

from __future__ import annotations

import importlib

# scoring name -> (module in this package, class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "generate": ("generate", "GenerateScorer"),
    "single_pass": ("single_pass", "SinglePassScorer"),
    "head": ("head", "HeadScorer"),
}

SCORINGS: tuple[str, ...] = tuple(_REGISTRY)


def scorer_class(name: str):
    """The :class:`Scorer` subclass registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {name!r}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["SCORINGS", "scorer_class"]
