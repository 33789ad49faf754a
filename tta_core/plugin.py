"""The API for plugin authors: what a plugin, built-in or third-party, may import.

Example, a whole plugin::

    from tta_core.plugin import hookimpl

    @hookimpl
    def tta_register(register):
        register("vocoder", "griffin_lim", "my_package.vocoders:GriffinLim")

This module is the public API for plugins: a plugin (and its tests) imports from here, and
from ``tta_core.testing.conformance``, the contract checks every kind of component can run
through. Anything else in ``tta_core`` may change between versions without notice.

A plugin module may declare the tta versions it supports, as a PEP 440 specifier::

    tta_requires = ">=0.1,<0.2"

Under another tta version it is not loaded: ``tta-run plugins`` lists it as
``broken: unsupported tta version: ...`` and every other plugin keeps working. Declare the
same range in your distribution's dependencies (``tta>=0.1,<0.2``) so pip agrees.
"""

from __future__ import annotations

from typing import Any

import pluggy

from .data.items import Collector, Item, ItemSet, resolve_path
from .errors import DataError, TtaError, UsageError
from .interfaces import Autoencoder, Conditioner, Conditioning, Denoiser, Process, Sampler, Vocoder
from .recipe import Component, Ref
from .registry import KINDS


def build_component(kind: str, node: dict) -> Any:
    """Build a registered component from a recipe-style node, e.g.
    ``build_component("process", {"type": "v_diffusion"})``, with the plugins loaded first."""
    from .discovery import get_registry
    from .recipe import build

    registry = get_registry()
    if not isinstance(node, dict) or "type" not in node:
        raise UsageError(f"a component node is a mapping with a type: key, got {node!r}")
    if not registry.has(kind, node["type"]):
        raise UsageError(registry.unknown_message(kind, str(node["type"])))
    return build(node, kind, registry)

#: Decorator marking a function as an implementation of a hook in :mod:`tta_core.hookspecs`.
hookimpl = pluggy.HookimplMarker("tta")

__all__ = [
    "hookimpl", "KINDS", "TtaError", "UsageError", "build_component",
    "Conditioning", "Conditioner", "Autoencoder", "Denoiser", "Process", "Sampler", "Vocoder",
    "Component", "Ref",
    # for dataset readers: build an ItemSet row by row under the bad-row rules (docs/data.md)
    "Collector", "Item", "ItemSet", "resolve_path", "DataError",
]
