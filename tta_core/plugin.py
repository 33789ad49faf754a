"""The API for plugin authors: what a plugin, built-in or third-party, may import.

Example, a whole plugin::

    from tta_core.plugin import hookimpl

    @hookimpl
    def tta_register(register):
        register("vocoder", "griffin_lim", "my_package.vocoders:GriffinLim")

Everything else a plugin needs from tta is re-exported here as it is added to the public API.
"""

from __future__ import annotations

import pluggy

from .data.items import Collector, Item, ItemSet, resolve_path
from .errors import DataError, TtaError, UsageError
from .interfaces import Autoencoder, Conditioner, Conditioning, Denoiser, Process, Sampler, Vocoder
from .recipe import Component, Ref
from .registry import KINDS

#: Decorator marking a function as an implementation of a hook in :mod:`tta_core.hookspecs`.
hookimpl = pluggy.HookimplMarker("tta")

__all__ = [
    "hookimpl", "KINDS", "TtaError", "UsageError",
    "Conditioning", "Conditioner", "Autoencoder", "Denoiser", "Process", "Sampler", "Vocoder",
    "Component", "Ref",
    # for dataset readers: build an ItemSet row by row under the bad-row rules (docs/data.md)
    "Collector", "Item", "ItemSet", "resolve_path", "DataError",
]
