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

What is here, by kind (the contracts' docstrings give the shapes):

every plugin
    ``hookimpl``, ``KINDS``, ``build_component`` (a registered component from a recipe-style
    node), ``import_inner_package``; the errors a user can cause: ``TtaError``,
    ``UsageError``, ``RecipeError``, ``CheckpointError``, ``DataError``, and ``closest`` (the
    "did you mean" of an error message); factory-argument annotations the recipe validator
    checks: ``Component``, ``Ref``, ``Range``.
conditioner, autoencoder, denoiser, vocoder, embedder
    the contracts ``Conditioner``, ``Autoencoder``, ``Denoiser``, ``Vocoder``, ``Embedder``
    and the value ``Conditioning``; audio settings ``AudioConfig``, ``MelConfig`` and the
    training mel ``log_mel``, ``LogMel``, ``mel_filterbank`` (a vocoder or embedder that
    must see the mel the models were trained on) and its floor ``LOG_FLOOR``; weights: ``load_state`` (with a message
    naming missing and unexpected keys), ``torch_load`` (``weights_only``, no pickled code),
    ``empty_parameters`` (build a network as placeholders that ``load_state`` then fills: no
    initialisation, weights held once).
process, sampler
    ``Process``, ``Sampler``, ``DenoiseFn``, ``TrainingPair``; the built-in processes and
    samplers to compose with: ``VPDiscrete``, ``VDiffusion``, ``RectifiedFlow``, ``DDPM``,
    ``DDIM``, ``VSampler``; ``initial_noise`` and ``start_scale`` (where a schedule starts);
    ``draw_normal`` (noise drawn on the generator's device and moved, as diffusers draws it).
objective
    ``Objective``, ``StageContext``; ``training_dataset`` (the stage's examples: cached mels
    and/or waves, cropped as the stage says) and ``collate``; ``channels_problem`` and
    ``with_channels`` (audio channels against what an autoencoder takes); for ``validate``:
    ``write_audio``, ``save_spectrogram``.
dataset
    ``Collector``, ``Item``, ``ItemSet``, ``resolve_path`` (see docs/data.md).
importer
    ``Imported``, ``read_tensors`` (.ckpt/.pt/.safetensors without running code in them),
    ``state_dict_of``, ``under``, ``find_prefix``, ``shipped_recipe``; recipes:
    ``Recipe``, ``load_recipe``, ``apply_override``, ``load_yaml``, ``build``,
    ``component_kind``, ``resolve_roles``, ``audio_config``.

Importing this module stays light (no torch): names whose modules need torch are imported
on first use, so ``from tta_core.plugin import collate`` inside a factory costs nothing until
then.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from .data.config import LOG_FLOOR, AudioConfig, MelConfig
from .data.items import Collector, Item, ItemSet, resolve_path
from .errors import CheckpointError, DataError, RecipeError, TtaError, UsageError, closest
from .interfaces import (Autoencoder, Conditioner, Conditioning, Denoiser, DenoiseFn, Embedder, Process, Sampler,
                         Vocoder)
from .recipe import Component, Range, Recipe, Ref, apply_override, build, component_kind, load_recipe
from .registry import KINDS
from .yamlio import load_yaml

#: Names imported on first use (PEP 562), so that importing this module, which loading any
#: plugin does (``tta-run plugins`` included), never imports torch: name -> "module:attribute".
_LAZY = {
    "Objective": "tta_core.training.objective:Objective",
    "StageContext": "tta_core.training.objective:StageContext",
    "training_dataset": "tta_core.training.datasets:training_dataset",
    "collate": "tta_core.data.dataset:collate",
    "channels_problem": "tta_core.data.audio:channels_problem",
    "with_channels": "tta_core.data.audio:with_channels",
    "log_mel": "tta_core.data.mel:log_mel",
    "LogMel": "tta_core.data.mel:LogMel",
    "mel_filterbank": "tta_core.data.mel:mel_filterbank",
    "Imported": "tta_core.importing:Imported",
    "read_tensors": "tta_core.importing:read_tensors",
    "state_dict_of": "tta_core.importing:state_dict_of",
    "under": "tta_core.importing:under",
    "find_prefix": "tta_core.importing:find_prefix",
    "shipped_recipe": "tta_core.importing:shipped_recipe",
    "load_state": "tta_core.checkpoint:load_state",
    "torch_load": "tta_core.checkpoint:torch_load",
    "empty_parameters": "tta_core.checkpoint:empty_parameters",
    "resolve_roles": "tta_core.roles:resolve_roles",
    "audio_config": "tta_core.sampling:audio_config",
    "save_spectrogram": "tta_core.media:save_spectrogram",
    "write_audio": "tta_core.media:write_audio",
    "TrainingPair": "tta_core.diffusion:TrainingPair",
    "VPDiscrete": "tta_core.diffusion:VPDiscrete",
    "VDiffusion": "tta_core.diffusion:VDiffusion",
    "DDPM": "tta_core.diffusion:DDPM",
    "DDIM": "tta_core.diffusion:DDIM",
    "VSampler": "tta_core.diffusion:VSampler",
    "RectifiedFlow": "tta_core.diffusion:RectifiedFlow",
    "initial_noise": "tta_core.diffusion:initial_noise",
    "draw_normal": "tta_core.diffusion.processes:draw_normal",
    "start_scale": "tta_core.diffusion:start_scale",
    "copy_adapters": "tta_core.adapters:copy_adapters",
    "ShardSource": "tta_core.data.stream:ShardSource",
    "expand_shards": "tta_core.data.stream:expand",
}

if TYPE_CHECKING:  # what type checkers and editors see of the names above
    from .adapters import copy_adapters
    from .checkpoint import empty_parameters, load_state, torch_load
    from .data.audio import channels_problem, with_channels
    from .data.dataset import collate
    from .data.mel import LogMel, log_mel, mel_filterbank
    from .data.stream import ShardSource
    from .data.stream import expand as expand_shards
    from .diffusion import (DDIM, DDPM, RectifiedFlow, TrainingPair, VDiffusion, VPDiscrete, VSampler, initial_noise,
                            start_scale)
    from .diffusion.processes import draw_normal
    from .importing import Imported, find_prefix, read_tensors, shipped_recipe, state_dict_of, under
    from .media import save_spectrogram, write_audio
    from .roles import resolve_roles
    from .sampling import audio_config
    from .training.datasets import training_dataset
    from .training.objective import Objective, StageContext


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def build_component(kind: str, node: dict) -> Any:
    """Build a registered component from a recipe-style node, e.g.
    ``build_component("process", {"type": "v_diffusion"})``, with the plugins loaded first.
    What the factory raises reaches the caller as it is (a plugin's tests can expect its
    ValueError); the command line reports it naming the component instead."""
    from .discovery import get_registry

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
    # every plugin
    "hookimpl", "KINDS", "build_component", "import_inner_package",
    "TtaError", "UsageError", "RecipeError", "CheckpointError", "DataError", "closest",
    "Component", "Ref", "Range",  # annotations of factory arguments the recipe validator checks
    # the contracts
    "Conditioning", "Conditioner", "Autoencoder", "Denoiser", "Process", "Sampler", "Vocoder", "Embedder",
    "DenoiseFn", "TrainingPair", "Objective", "StageContext",
    # audio, mels and weights
    "AudioConfig", "MelConfig", "LOG_FLOOR", "log_mel", "LogMel", "mel_filterbank", "channels_problem", "with_channels",
    "load_state", "torch_load", "empty_parameters", "write_audio", "save_spectrogram",
    "copy_adapters",  # a network that copies itself by rebuilding keeps its adapters
    # built-in processes and samplers, to compose with
    "VPDiscrete", "VDiffusion", "RectifiedFlow", "DDPM", "DDIM", "VSampler", "initial_noise", "start_scale",
    "draw_normal",
    # objectives: the stage's examples
    "training_dataset", "collate",
    # dataset readers: build an ItemSet row by row under the bad-row rules (docs/data.md)
    "Collector", "Item", "ItemSet", "resolve_path",
    "ShardSource", "expand_shards",  # or tar shards that training reads as a stream (tta_core.data.stream)
    # importers and recipes
    "Imported", "read_tensors", "state_dict_of", "under", "find_prefix", "shipped_recipe",
    "Recipe", "load_recipe", "apply_override", "load_yaml", "build", "component_kind",
    "resolve_roles", "audio_config",
]
