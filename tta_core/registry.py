"""Registries: named component factories, grouped by kind, with where each came from.

Plugins never touch a registry directly; they receive a ``register(kind, name, factory)``
callback from the ``tta_register`` hook (see :mod:`tta_core.hookspecs`). A factory is any
callable that builds the component from keyword arguments (the recipe node minus ``type``),
or a ``"package.module:attribute"`` string that is imported on first use, so a plugin can
register without importing torch.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import DuplicateComponentError, UnknownComponentError, closest

#: Every kind of component, and what it is for. Recipes name components by (kind, name).
KINDS: dict[str, str] = {
    "autoencoder": "maps audio (mel or waveform) to latents and back",
    "conditioner": "turns text (and for some, audio) into Conditioning",
    "denoiser": "the network that a diffusion process trains and samples",
    "process": "noise schedule and parameterisation (training pairs, loss, sampling schedule)",
    "sampler": "integrates a denoiser from noise to a clean latent",
    "vocoder": "turns a mel spectrogram into a waveform",
    "objective": "a training stage: what it trains, its losses and optimizers",
    "dataset": "reads a dataset's metadata into captioned audio items",
    "embedder": "embeds audio (and text) for evaluation metrics",
    "importer": "reads weights trained elsewhere into a run directory (tta-run import)",
    "exporter": "writes a run's models in another framework's layout (tta-run export)",
}


@dataclass(frozen=True)
class Origin:
    """Where a registration came from."""

    plugin: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None

    def describe(self) -> str:
        where = f"plugin '{self.plugin}'"
        if self.distribution:
            where += f" ({self.distribution} {self.version or '?'})"
        return where


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: Any = field(repr=False)  # a callable, or "module:attr" resolved by load()
    origin: Origin
    default: bool = False  # the plugin offers it as its kind's default (Registry.default)

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing it first when it was registered by path."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        # what a plugin's module prints as it is first imported goes to stderr, as at plugin
        # loading (tta_core.discovery): stdout belongs to the command
        first = module_name not in sys.modules
        with contextlib.redirect_stdout(sys.stderr) if first else contextlib.nullcontext():
            obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def build(self, **kwargs: Any) -> Any:
        return self.load()(**kwargs)


class Registry:
    """All registered components, by kind then name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        #: plugins that could have provided more names (broken or disabled), for error hints
        self.unavailable: dict[str, str] = {}

    # -- writing ------------------------------------------------------------------------
    def check_new(self, kind: str, name: str, target: Any, origin: Origin) -> Entry:
        """Validate one registration without adding it; returns the entry to add."""
        if kind not in KINDS:
            hint = closest(kind, KINDS)
            raise UnknownComponentError(
                f"{origin.describe()} registers '{name}' under unknown kind '{kind}'. "
                f"Kinds: {', '.join(KINDS)}." + (f" Did you mean '{hint}'?" if hint else ""),
                kind="kind",
                name=kind,
                suggestion=hint,
            )
        if not isinstance(name, str) or not name or not name.replace("_", "a").replace("-", "a").isalnum():
            raise ValueError(
                f"{origin.describe()}: component names are non-empty words "
                f"(letters, digits, '_', '-'); got {name!r}"
            )
        if not (callable(target) or (isinstance(target, str) and ":" in target)):
            raise TypeError(
                f"{origin.describe()}: the factory for {kind} '{name}' must be a callable or "
                f"a 'module:attribute' string, got {target!r}"
            )
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} '{name}' is registered twice: by {existing.origin.describe()} and by "
                f"{origin.describe()}. Disable one of them with TTA_DISABLE_PLUGINS="
                f"{origin.plugin} (or {existing.origin.plugin})."
            )
        return Entry(kind, name, target, origin)

    def add(self, entry: Entry) -> None:
        self.check_new(entry.kind, entry.name, entry.target, entry.origin)
        self._entries[entry.kind][entry.name] = entry

    # -- reading ------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def default(self, kind: str) -> str | None:
        """The name of the component a command uses for ``kind`` when neither the recipe nor
        the command line names one: the one a plugin registered with ``default=True``. None
        when no plugin offers one, or when several do (the user then has to choose)."""
        offered = [name for name, entry in self._entries[kind].items() if entry.default]
        return offered[0] if len(offered) == 1 else None

    def has(self, kind: str, name: str) -> bool:
        return name in self._entries.get(kind, {})

    def kinds_of(self, name: str) -> list[str]:
        return [kind for kind in KINDS if name in self._entries[kind]]

    def get(self, kind: str, name: str) -> Entry:
        if kind not in KINDS:
            raise UnknownComponentError(
                f"unknown kind '{kind}'. Kinds: {', '.join(KINDS)}.",
                kind="kind", name=kind, suggestion=closest(kind, KINDS),
            )
        entry = self._entries[kind].get(name)
        if entry is None:
            raise UnknownComponentError(
                self.unknown_message(kind, name), kind=kind, name=name,
                suggestion=closest(name, self._entries[kind]),
            )
        return entry

    def unknown_message(self, kind: str, name: str, kinds: list[str] | None = None) -> str:
        """The message for an unknown name: what exists, the closest match, who provides it."""
        kinds = kinds or [kind]
        known = {n: e for k in kinds for n, e in self._entries[k].items()}
        label = kind if len(kinds) == 1 else " / ".join(kinds)
        msg = f"unknown {label} '{name}'."
        hint = closest(name, known)
        if hint:
            msg += f" Did you mean '{hint}' (from {known[hint].origin.describe()})?"
        msg += f" Registered: {', '.join(sorted(known)) or 'none'}."
        elsewhere = [k for k in self.kinds_of(name) if k not in kinds]
        if elsewhere:
            msg += f" ('{name}' exists as a {' and a '.join(elsewhere)}, which does not fit here.)"
        if self.unavailable:
            msg += " Not loaded: " + "; ".join(
                f"plugin '{p}' ({why})" for p, why in sorted(self.unavailable.items())
            ) + "."
        return msg
