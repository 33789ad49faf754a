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

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from .data.items import Collector, Item, ItemSet, resolve_path
from .errors import DataError, TtaError, UsageError
from .interfaces import Autoencoder, Conditioner, Conditioning, Denoiser, Embedder, Process, Sampler, Vocoder
from .recipe import Component, Range, Ref
from .registry import KINDS


def build_component(kind: str, node: dict) -> Any:
    """Build a registered component from a recipe-style node, e.g.
    ``build_component("process", {"type": "v_diffusion"})``, with the plugins loaded first.
    What the factory raises reaches the caller as it is (a plugin's tests can expect its
    ValueError); the command line reports it naming the component instead."""
    from .discovery import get_registry
    from .recipe import build

    from .errors import RecipeError

    registry = get_registry()
    if not isinstance(node, dict) or "type" not in node:
        raise UsageError(f"a component node is a mapping with a type: key, got {node!r}")
    if not registry.has(kind, node["type"]):
        raise UsageError(registry.unknown_message(kind, str(node["type"])))
    try:
        return build(node, kind, registry)
    except RecipeError as exc:  # a plugin's tests see what its factory raised (ValueError, TypeError)
        if isinstance(exc.__cause__, (ValueError, TypeError)):
            raise exc.__cause__ from None
        raise


def import_inner_package(package: str, inner: str, *, missing: str) -> ModuleType:
    """The folder ``<package>/<inner>/`` of an installed package, imported as the top-level
    module ``inner`` without running ``<package>/__init__.py``.

    For libraries whose top-level ``__init__`` does more than a plugin needs: laion-clap's
    loads three tokenizers from the Hugging Face hub (and hangs without a network unless
    HF_HUB_OFFLINE=1 is set), while its model package ``clap_module``, which laion-clap's own
    code imports under that top-level name, reaches for no network. If ``inner`` is imported
    already (the library was imported whole), that module is returned, so both share one copy.
    ``missing``: the message of the :class:`TtaError` raised when ``package`` is not installed.
    """
    if inner in sys.modules:
        return sys.modules[inner]
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TtaError(missing)
    root = Path(next(iter(spec.submodule_search_locations))) / inner
    spec = importlib.util.spec_from_file_location(inner, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    if spec is None:
        raise TtaError(f"{missing} (its folder {inner}/ is not where it was expected: {root})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[inner] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[inner]
        raise
    return module


#: Decorator marking a function as an implementation of a hook in :mod:`tta_core.hookspecs`.
hookimpl = pluggy.HookimplMarker("tta")

__all__ = [
    "hookimpl", "KINDS", "TtaError", "UsageError", "build_component", "import_inner_package",
    "Conditioning", "Conditioner", "Autoencoder", "Denoiser", "Process", "Sampler", "Vocoder", "Embedder",
    "Component", "Ref", "Range",  # annotations of factory arguments the recipe validator checks
    # for dataset readers: build an ItemSet row by row under the bad-row rules (docs/data.md)
    "Collector", "Item", "ItemSet", "resolve_path", "DataError",
]
