"""Finding and loading plugins through the ``tta.plugins`` entry-point group.

Built-in plugins are found the same way as third-party ones. A plugin that fails to import or
to register is reported (entry point, plugin, error) and the others keep working, unless
strict loading is on. Environment switches, as pytest has them:

- ``TTA_STRICT_PLUGINS=1``: a broken plugin is fatal (same as ``--strict-plugins``);
- ``TTA_DISABLE_PLUGINS=a,b``: skip these plugins (entry-point names);
- ``TTA_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry point except those named in
  ``TTA_PLUGINS=a,b``.

Whatever a plugin prints while it is imported and registers goes to stderr: stdout belongs to
the command (``tta-run plugins --json`` and ``show --json`` are read by programs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Entry, Origin, Registry

ENTRY_POINT_GROUP = "tta.plugins"


@dataclass
class PluginRecord:
    """One plugin as loading found it."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    status: str = "ok"  # "ok", "broken: <reason>" or "disabled"
    error: BaseException | None = field(default=None, repr=False)
    details: str = field(default="", repr=False)  # traceback of the failure, for --debug
    components: list[Entry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Plugins:
    """The outcome of loading: the registry and a record per plugin."""

    registry: Registry
    records: list[PluginRecord]
    manager: pluggy.PluginManager = field(repr=False)

    @property
    def broken(self) -> list[PluginRecord]:
        return [r for r in self.records if r.status.startswith("broken")]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_plugins(
    *,
    strict: bool | None = None,
    disabled: Iterable[str] | None = None,
    autoload: bool | None = None,
    enabled: Iterable[str] | None = None,
    extra: Iterable[tuple[str, Any]] = (),
) -> Plugins:
    """Load every plugin of the entry-point group into a fresh registry.

    Arguments left as None come from the environment (see the module doc). ``extra`` adds
    ``(name, plugin object)`` pairs after the entry points, for embedding and tests.
    """
    strict = _env_flag("TTA_STRICT_PLUGINS") if strict is None else strict
    disabled = _env_list("TTA_DISABLE_PLUGINS") if disabled is None else set(disabled)
    autoload = (not _env_flag("TTA_DISABLE_PLUGIN_AUTOLOAD")) if autoload is None else autoload
    enabled = _env_list("TTA_PLUGINS") if enabled is None else set(enabled)

    manager = pluggy.PluginManager("tta")
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    records: list[PluginRecord] = []

    with contextlib.redirect_stdout(sys.stderr):
        _load_entry_points(manager, registry, records, disabled, autoload, enabled)
        for name, obj in extra:
            record = PluginRecord(name, repr(obj), None, None)
            records.append(record)
            _register(manager, registry, record, obj)

    result = Plugins(registry, records, manager)
    if strict and result.broken:
        raise PluginError(
            "plugins failed to load (strict plugin loading is on):\n"
            + "\n".join(f"  {r.name} ({r.value}): {r.status}" for r in result.broken)
        )
    return result


def _load_entry_points(
    manager: pluggy.PluginManager, registry: Registry, records: list[PluginRecord],
    disabled: set[str], autoload: bool, enabled: set[str],
) -> None:
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    seen: set[str] = set()
    for ep in eps:
        if ep.name in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            ep.name, ep.value, dist.name if dist else None, dist.version if dist else None
        )
        records.append(record)
        if ep.name in disabled or (not autoload and ep.name not in enabled):
            record.status = "disabled"
            registry.unavailable[ep.name] = (
                "disabled by TTA_DISABLE_PLUGINS" if ep.name in disabled else "autoload is off"
            )
            continue
        try:
            obj = ep.load()
        except BaseException as exc:  # a plugin may raise anything at import, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            _mark_broken(record, registry, exc, f"import of '{ep.value}' failed")
            continue
        _register(manager, registry, record, obj)


def _mark_broken(record: PluginRecord, registry: Registry, exc: BaseException, what: str) -> None:
    record.status = f"broken: {what}: {_describe(exc)}"
    record.error = exc
    record.details = "".join(traceback.format_exception(exc))
    record.components = []
    registry.unavailable[record.name] = "failed to load"


def unsupported(obj: Any, version: str | None = None) -> str | None:
    """Why a plugin cannot load with this tta (None when it can): its module-level
    ``tta_requires`` (a PEP 440 specifier such as ``">=0.1,<0.2"``) excludes this version."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from . import __version__

    wanted = getattr(obj, "tta_requires", None)
    if wanted is None:
        return None
    version = version or __version__
    try:
        spec = SpecifierSet(str(wanted))
    except InvalidSpecifier:
        return f"its tta_requires {wanted!r} is not a version specifier (e.g. '>=0.1,<0.2')"
    if spec.contains(version, prereleases=True):
        return None
    return f"it supports tta {wanted}, and this is tta {version}: install a version of the plugin made for it"


def _register(manager: pluggy.PluginManager, registry: Registry, record: PluginRecord, obj) -> None:
    origin = Origin(record.name, record.distribution, record.version, record.value)
    staged: list[Entry] = []
    why = unsupported(obj)
    if why:
        record.status = f"broken: unsupported tta version: {why}"
        record.details = record.status
        registry.unavailable[record.name] = "unsupported tta version"
        return

    def register(kind: str, name: str, factory: Any, *, default: bool = False) -> None:
        entry = registry.check_new(kind, name, factory, origin)
        if default:
            entry = dataclasses.replace(entry, default=True)
        if any(e.kind == kind and e.name == name for e in staged):
            raise ValueError(f"{kind} '{name}' is registered twice by {origin.describe()}")
        staged.append(entry)

    try:
        manager.register(obj, name=record.name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        _mark_broken(record, registry, exc, "not a valid plugin")
        return
    try:
        for impl in manager.hook.tta_register.get_hookimpls():
            if impl.plugin_name == record.name:
                impl.function(**{arg: register for arg in impl.argnames})
        for entry in staged:  # all of a plugin's registrations, or none
            registry.add(entry)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        manager.unregister(name=record.name)
        _mark_broken(record, registry, exc, "registration failed")
        return
    record.components = staged


_cached: Plugins | None = None


def get_plugins(*, strict: bool | None = None) -> Plugins:
    """The plugins of this process, loaded once (per strictness) and shared."""
    global _cached
    if _cached is None:
        _cached = load_plugins(strict=strict)
    elif strict and _cached.broken:
        load_plugins(strict=True)  # raises with the full report
    return _cached


def get_registry() -> Registry:
    return get_plugins().registry


def reset() -> None:
    """Forget the loaded plugins (after installing one, or in tests)."""
    global _cached
    _cached = None
