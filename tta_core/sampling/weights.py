"""Which trained weights a sample graph loads.

The rule (also in docs/sampling.md): a component with parameters loads the latest
checkpoint of the last stage in ``train:`` whose ``trains:`` lists it, from
``<run dir>/<stage>/checkpoints/``: ``<name>.ema.safetensors`` when the stage kept an EMA
(unless ``ema=False``), else ``<name>.safetensors``; else ``<run dir>/weights/<name>.safetensors``
(weights the run was given, as ``tta-run import`` writes for parts no stage trains). ``ckpt=``
names one checkpoint folder to take weights from first. A component needs no checkpoint when
it has no parameters (Griffin-Lim, a process) or when its recipe node sets ``pretrained:`` (its
factory loads its own weights; a checkpoint, when one exists, still wins). Any other component
without weights is an error that names the stage to train, so nothing is sampled from random
weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..adapters import ADAPTER_SUFFIX, load_adapter, read_adapter

from ..checkpoint import Checkpoint, load_checkpoint, load_state, load_weights
from ..errors import TtaError, UsageError
from ..recipe import Recipe
from ..runs import RunDir, has_params, stages_training, weights_file

log = logging.getLogger("tta.sampling")


class MissingWeightsError(TtaError):
    """A trainable component has no trained weights to sample with."""

    exit_code = 1


@dataclass(frozen=True)
class LoadedWeights:
    """Where a component's weights came from (for the manifest)."""

    component: str
    path: Path | None  # the .safetensors file, None for pretrained / parameter-free
    ema: bool = False
    source: str = "checkpoint"  # checkpoint | pretrained | none (no parameters)
    adapters: tuple[str, ...] = ()  # adapter files applied on top, as "PATH" or "PATH:SCALE"

    def describe(self) -> str:
        base = self.source if self.path is None else str(self.path)
        return base + "".join(f" + adapter {a}" for a in self.adapters)


def _ema_first(folder: Path, name: str, ema: bool) -> tuple[Path | None, bool]:
    """(``folder/<name>.ema.safetensors``, True) when ``ema`` and it is there, else
    (``folder/<name>.safetensors``, False) when that is, else (None, False)."""
    for use_ema in ((True, False) if ema else (False,)):
        if (folder / weights_file(name, use_ema)).is_file():
            return folder / weights_file(name, use_ema), use_ema
    return None, False


def _chosen_file(chosen: Checkpoint | None, name: str, ema: bool) -> tuple[Path | None, bool]:
    """The component's file in the checkpoint folder given as ``ckpt``, EMA first."""
    return _ema_first(chosen.path, name, ema) if chosen is not None else (None, False)


def _missing(name: str, stages: list[str], run: RunDir, recipe: Recipe) -> str:
    ref = recipe.path
    if stages:
        return (f"'{name}' has no trained weights in {run.checkpoints(stages[-1])}: "
                f"train it first with `tta-run {ref} train --stage {stages[-1]}`")
    return (f"'{name}' has parameters but no stage of train: trains it and its node sets no pretrained:; "
            f"add it to a stage's trains: and run `tta-run {ref} train`")


def _weights_path(name: str, recipe: Recipe, run: RunDir, chosen: Checkpoint | None,
                  ema: bool) -> tuple[Path | None, bool, str | None]:
    """(the file, whether it is an EMA copy, the stage that trained it) for component
    ``name`` by the rule in the module docstring; (None, False, None) when it has none."""
    path, use_ema = _chosen_file(chosen, name, ema)
    if path is not None:
        return path, use_ema, None
    found = run.find_weights(name, stages_training(recipe, name), prefer_ema=ema)
    if found is not None:
        return found.path, found.ema, found.stage
    return run.given_weights(name), False, None


def weight_files(names: Sequence[str], recipe: Recipe, run_dir: Path, *, ckpt: str | os.PathLike | None = None,
                 ema: bool = True) -> dict[str, Path]:
    """The weights file each of ``names`` would load (those that have one), without loading it."""
    run, chosen = RunDir(run_dir), load_checkpoint(ckpt) if ckpt is not None else None
    files = {name: _weights_path(name, recipe, run, chosen, ema)[0] for name in names}
    return {name: path for name, path in files.items() if path is not None}


def load_weights_for(components: Mapping[str, Any], recipe: Recipe, run_dir: Path, *,
                     ckpt: str | os.PathLike | None = None, ema: bool = True) -> dict[str, LoadedWeights]:
    """Load trained weights into ``components`` (name -> built component) by the rule in
    the module docstring; every component that lacks them is reported at once. A component
    built with :func:`tta_core.checkpoint.empty_parameters` takes the file's tensors as its own."""
    run = RunDir(run_dir)
    chosen = load_checkpoint(ckpt) if ckpt is not None else None
    loaded, missing = {}, []
    for name, component in components.items():
        if not has_params(component):
            loaded[name] = LoadedWeights(name, None, source="none")
            continue
        path, use_ema, base_stage = _weights_path(name, recipe, run, chosen, ema)
        if path is not None:
            load_state(component, load_weights(path), str(path))
            applied = apply_run_adapters(component, name, recipe, run, chosen, base_stage, ema)
            loaded[name] = LoadedWeights(name, path, use_ema, adapters=applied)
        elif recipe.components[name].get("pretrained") not in (None, False):
            applied = apply_run_adapters(component, name, recipe, run, chosen, None, ema)
            loaded[name] = LoadedWeights(name, None, source="pretrained", adapters=applied)
        else:
            missing.append(_missing(name, stages_training(recipe, name), run, recipe))
    if missing:
        where = f" (run dir {run.root}" + (f", ckpt {ckpt}" if ckpt else "") + ")"
        raise MissingWeightsError("refusing to sample from untrained weights" + where + ":\n  "
                                  + "\n  ".join(missing))
    return loaded


def adapter_stages(recipe: Recipe, name: str) -> list[str]:
    """The stages of the recipe that train an adapter on component ``name``, in order."""
    from ..training.stage import parse_stage

    stages = [parse_stage(s) for s in recipe.get("train") or [] if isinstance(s, Mapping) and s.get("adapters")]
    return [s.name for s in stages if name in s.adapted]


def _adapter_file(folder: Path, name: str, ema: bool) -> Path | None:
    return _ema_first(folder, f"{name}.{ADAPTER_SUFFIX}", ema)[0]


def apply_run_adapters(component: Any, name: str, recipe: Recipe, run: RunDir, chosen: Checkpoint | None,
                       base_stage: str | None, ema: bool, within: Sequence[str] | None = None) -> tuple[str, ...]:
    """Put on ``component`` the adapters the run trained on it after its base weights'
    stage (only those of the stages ``within`` when given); their files."""
    stages = [s for s in adapter_stages(recipe, name) if within is None or s in within]
    if base_stage is not None:
        order = [s.get("name") for s in recipe.get("train") or [] if isinstance(s, Mapping)]
        stages = [s for s in stages if s in order and order.index(s) > order.index(base_stage)]
    applied = []
    for stage in stages:
        ckpt = chosen if chosen is not None and chosen.state.get("stage") == stage else run.latest(stage)
        path = _adapter_file(ckpt.path, name, ema) if ckpt is not None else None
        if path is None:
            log.info("%s: stage '%s' has no adapter checkpoint yet; sampling without it", name, stage)
            continue
        load_adapter(component, path, name="".join(c if c.isalnum() else "_" for c in stage))
        applied.append(str(path))
    return tuple(applied)


def parse_adapter_spec(spec: Any) -> tuple[Path, float]:
    """``PATH`` or ``PATH:SCALE`` (or a (path, scale) pair) as (path, scale)."""
    if isinstance(spec, (tuple, list)):
        path, scale = spec
        return Path(path), float(scale)
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def adapter_files(path: Path, ema: bool = True) -> list[Path]:
    """The adapter files ``path`` names: itself when a file; in a checkpoint folder every
    ``*.adapter.safetensors`` (the EMA copy where there is one); in a stage folder those of
    its latest checkpoint."""
    from ..checkpoint import latest_checkpoint

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--adapter {path}: no such file or folder")
    ckpt = path if (path / "state.json").is_file() else None
    if ckpt is None:
        latest = latest_checkpoint(path / "checkpoints")
        ckpt = latest.path if latest is not None else None
    files = []
    if ckpt is not None:
        for raw in sorted(ckpt.glob(f"*.{ADAPTER_SUFFIX}.safetensors")):
            component = raw.name[: -len(f".{ADAPTER_SUFFIX}.safetensors")]
            files.append(_adapter_file(ckpt, component, ema))
    if not files:
        raise UsageError(f"--adapter {path}: no adapter files there (an adapter .safetensors file, a checkpoint "
                         f"folder or a stage folder of a stage with adapters:)")
    return files


def add_adapters(components: Mapping[str, Any], kinds: Mapping[str, str], specs: Sequence[Any],
                 ema: bool = True) -> dict[str, list[str]]:
    """Put the adapters of ``specs`` (see :func:`parse_adapter_spec`, :func:`adapter_files`)
    on ``components`` (name -> built component; ``kinds``: name -> kind): each on the component
    its file names, else on the only component of the file's kind. Returns name -> the files
    applied (as PATH:SCALE)."""
    applied: dict[str, list[str]] = {}
    for spec in specs:
        path, scale = parse_adapter_spec(spec)
        for file in adapter_files(path, ema):
            found = read_adapter(file)
            name = found.component if found.component in components else None
            if name is None:
                same = [n for n, k in kinds.items() if found.kind and k == found.kind]
                if len(same) != 1:
                    raise UsageError(f"--adapter {file}: it was trained on '{found.component or '?'}' "
                                     f"({found.kind or 'kind unknown'}), and this recipe has "
                                     + (f"several components of that kind ({', '.join(same)})" if same
                                        else "no such component"))
                name = same[0]
            try:
                load_adapter(components[name], file, scale=scale)
            except UsageError as exc:
                raise UsageError(f"--adapter {file} on '{name}': {exc}") from None
            applied.setdefault(name, []).append(f"{file}:{scale:g}")
    return applied
