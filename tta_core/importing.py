"""Weights trained elsewhere, brought into a run directory: ``tta-run import FORMAT SOURCE... --out RUN_DIR``.

An importer (a plugin registers it as kind ``importer``) reads files in a foreign layout and
returns an :class:`Imported`: a recipe (the components the weights fit and the stages that
train them) and, per component, its state dict in the component's own names, plus the EMA
copy when the source kept one. :func:`write_run` checks every state dict strictly against
the component the recipe builds (a readable list of missing, unexpected and reshaped keys
otherwise; nothing is written then) and writes::

    RUN_DIR/recipe.yaml          the recipe, with ``run_dir: .``
    RUN_DIR/<stage>/checkpoints/step-00000000/
        <component>.safetensors, <component>.ema.safetensors, state.json
                                 for each component a stage trains (the last such stage)
    RUN_DIR/weights/<component>.safetensors
                                 for the others (a text encoder, a vocoder)
    RUN_DIR/<files>              files the components read (a tokenizer's folder)
    RUN_DIR/imported.json        format, sources, and what went where

so ``tta-run RUN_DIR/recipe.yaml sample`` samples with them (the EMA copy first, as after
training), ``tta-run RUN_DIR/recipe.yaml train --stage S`` fine-tunes them (the optimizer
starts fresh), and ``tta-run OTHER.yaml train --init-from RUN_DIR`` starts another recipe
from them.

The importer contract::

    class MyImporter:
        '''One line: what it reads (shown by `tta-run plugins` and `tta-run import --help`).'''

        def __call__(self, sources: list[Path], *, out: Path, recipe: str | None,
                     overrides: Sequence[str], registry) -> Imported: ...

``out`` is the run directory to be (absolute; nothing is there yet: a recipe that names files
the run will hold, a tokenizer's folder say, names them under it and lists them in
``Imported.files``); ``recipe`` the user's ``--recipe`` (None: the importer's own default),
``overrides`` their ``--set KEY=VALUE`` texts, to apply to it.

Reading foreign files: :func:`read_tensors` loads ``.safetensors`` and PyTorch checkpoints
(Lightning's ``.ckpt`` included) without executing anything in them. Objects of classes it
does not know (a training script's hyper-parameters, say) are read as inert placeholders and
dropped; only tensors and plain containers come out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import CheckpointError, UsageError


@dataclass
class Imported:
    """What an importer found: the recipe (a Recipe) and per component its weights."""

    recipe: Any  # tta_core.recipe.Recipe
    weights: dict[str, dict]  # component -> state dict (the raw model, or the only one)
    ema: dict[str, dict] = field(default_factory=dict)  # component -> its EMA copy
    sources: dict[str, str] = field(default_factory=dict)  # component -> "file (prefix)"
    notes: list[str] = field(default_factory=list)  # printed and kept in imported.json
    files: dict[str, Path] = field(default_factory=dict)  # path in the run dir -> file or folder to copy


# -- reading ----------------------------------------------------------------------------------


class _Inert(dict):
    """Stands in for an object of a class the reader does not load; absorbs its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


def _restricted_pickle():
    """A pickle module whose Unpickler resolves only what ``torch.load(weights_only=True)``
    allows; any other global becomes an :class:`_Inert` class, so nothing foreign runs."""
    import pickle
    import types

    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # other torch versions: the bare minimum
        import collections

        import torch

        allowed = {"collections.OrderedDict": collections.OrderedDict,
                   "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                   "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found = allowed.get(f"{module}.{name}")
            if found is not None:
                return found
            return type(name if name.isidentifier() else "Inert", (_Inert,), {"__module__": "tta_core.importing"})

    return types.SimpleNamespace(Unpickler=Unpickler, load=lambda f, **kw: Unpickler(f, **kw).load(),
                                 __name__="tta_restricted_pickle")


def read_tensors(path: str | os.PathLike, *, weights_only: bool = False) -> Any:
    """The content of a weights file: ``.safetensors`` as a state dict; a PyTorch file
    (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) as what it holds, read without running any code
    it names (see the module docstring). ``weights_only``: refuse, rather than read as inert
    placeholders, objects beyond what ``torch.load(weights_only=True)`` allows."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"not a file: {path}")
    if path.suffix == ".safetensors":
        from .checkpoint import load_weights

        return load_weights(path)
    if weights_only:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path} needs arbitrary Python classes to load{what}, so it is refused: it is read with "
                "torch.load(weights_only=True). If you trust the file, save just its state dict and import that: "
                "python -c \"import torch; c = torch.load('IN', weights_only=False); "
                "torch.save({'state_dict': c['state_dict']}, 'OUT')\"") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {type(exc).__name__}: {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle())
    except Exception as exc:  # a damaged or foreign file: the message says which
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {type(exc).__name__}: {exc}") from None


def state_dict_of(obj: Any, path: str | os.PathLike = "") -> dict:
    """The flat tensor state dict in what :func:`read_tensors` returned: a Lightning
    checkpoint's ``state_dict``, else the mapping itself; non-tensor entries dropped."""
    import torch

    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint with one")
    out = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(f"{path}: no tensors found (is it a weights file?)")
    return out


def under(state: Mapping[str, Any], prefix: str) -> dict:
    """The entries of ``state`` under ``prefix``, with it taken off."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def shipped_recipe(filename: str) -> Path:
    """A recipe of the project's ``recipes/`` folder (a source checkout's, else the working
    directory's), an importer's default when the user gives no ``--recipe``."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        path = root / "recipes" / filename
        if path.is_file():
            return path
    raise UsageError(f"recipes/{filename} not found here: name the recipe with --recipe FILE")


def find_prefix(state: Mapping[str, Any], expected: Iterable[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` under which ``state`` holds every ``expected`` key."""
    expected = set(expected)
    for prefix in candidates:
        if expected <= set(under(state, prefix)):
            return prefix
    return None


# -- writing -----------------------------------------------------------------------------------


def write_run(out: str | os.PathLike, imported: Imported, *, registry: Any, fmt: str,
              force: bool = False) -> Path:
    """Check the weights against the recipe's components and write the run directory
    (see the module docstring). Returns the recipe file's path."""
    from .recipe import check

    out = Path(out)
    recipe = imported.recipe
    check(recipe, registry)
    audio = recipe.audio
    backup = None
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{out} exists and is not empty: choose another --out, or --force to replace it")
        backup = out.with_name(f".{out.name}.replaced-{os.getpid()}")  # back in place if this fails
        out.rename(backup)
    elif out.exists():
        out.rmdir()
    try:
        written = _write(out, imported, recipe, registry, audio, fmt)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if backup is not None:
            backup.rename(out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    (out / "imported.json").write_text(json.dumps(
        {"format": fmt, "sources": imported.sources, "checkpoints": written, "notes": imported.notes}, indent=2))
    return out / "recipe.yaml"


def _write(out: Path, imported: Imported, recipe: Any, registry: Any, audio: Any, fmt: str) -> dict:
    from .checkpoint import save_checkpoint, save_weights
    from .yamlio import dump_yaml, to_plain

    out.mkdir(parents=True)
    for rel, source in imported.files.items():  # first: the components may read them when built
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(source).is_dir() else shutil.copy2)(source, target)
    by_stage: dict[str, dict[str, dict]] = {}
    given: dict[str, dict] = {}
    _check(imported, recipe, registry, audio, by_stage, given)
    data = to_plain(recipe.data)
    data["run_dir"] = "."
    (out / "recipe.yaml").write_text(
        f"# imported by `tta-run import {fmt}` from: {', '.join(sorted(set(imported.sources.values())))}\n"
        + dump_yaml(data))
    written = {}
    for stage, files in by_stage.items():
        path = save_checkpoint(out / stage / "checkpoints", 0, weights=files,
                               state={"stage": stage, "imported": fmt},
                               metadata={"imported": fmt})
        written[stage] = {name: str(path / f"{name}.safetensors") for name in files}
    for name, state in given.items():
        (out / "weights").mkdir(exist_ok=True)
        save_weights(out / "weights" / f"{name}.safetensors", state, {"imported": fmt})
        written.setdefault("weights", {})[name] = str(out / "weights" / f"{name}.safetensors")
    return written


def _check(imported: Imported, recipe: Any, registry: Any, audio: Any, by_stage: dict, given: dict) -> None:
    """Every state dict strictly against the component the recipe builds; sorts them by home."""
    import torch

    from .checkpoint import load_state
    from .recipe import build, component_kind
    from .runs import stages_training

    problems = []
    for name, state in imported.weights.items():
        if name not in recipe.components:
            raise UsageError(f"the importer gave weights for '{name}', which the recipe has no component of")
        stages = stages_training(recipe, name)
        with torch.random.fork_rng(devices=[]):
            component = build(recipe.components[name], component_kind(recipe, name, registry), registry,
                              where=f"components.{name}", audio=audio)
        source = imported.sources.get(name, name)
        files = {name: state}
        try:  # a readable diff of keys and shapes when they do not fit, for every component at once
            load_state(component, state, f"{source} -> '{name}'", strict=True, hint="")
            if name in imported.ema:
                load_state(component, imported.ema[name], f"{source} (EMA) -> '{name}'", strict=True, hint="")
                files[f"{name}.ema"] = imported.ema[name]
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if stages:
            by_stage.setdefault(stages[-1], {}).update(files)
        else:
            given[name] = state
    if problems:
        raise CheckpointError("\n".join(problems) + "\nNothing was written: the weights do not fit the networks the "
                              "recipe describes (a different size or layout? the recipe can be adjusted with --set)")
