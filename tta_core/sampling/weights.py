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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..checkpoint import Checkpoint, load_checkpoint, load_state, load_weights
from ..errors import TtaError
from ..recipe import Recipe
from ..runs import RunDir, has_params, stages_training, weights_file


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

    def describe(self) -> str:
        if self.path is None:
            return self.source
        return str(self.path)


def _chosen_file(chosen: Checkpoint | None, name: str, ema: bool) -> tuple[Path | None, bool]:
    """The component's file in the checkpoint folder given as ``ckpt``, EMA first."""
    if chosen is not None:
        for use_ema in ((True, False) if ema else (False,)):
            if (chosen.path / weights_file(name, use_ema)).exists():
                return chosen.path / weights_file(name, use_ema), use_ema
    return None, False


def _missing(name: str, stages: list[str], run: RunDir, recipe: Recipe) -> str:
    ref = recipe.path
    if stages:
        return (f"'{name}' has no trained weights in {run.checkpoints(stages[-1])}: "
                f"train it first with `tta-run {ref} train --stage {stages[-1]}`")
    return (f"'{name}' has parameters but no stage of train: trains it and its node sets no pretrained:; "
            f"add it to a stage's trains: and run `tta-run {ref} train`")


def load_weights_for(components: Mapping[str, Any], recipe: Recipe, run_dir: Path, *,
                     ckpt: str | os.PathLike | None = None, ema: bool = True) -> dict[str, LoadedWeights]:
    """Load trained weights into ``components`` (name -> built component) by the rule in
    the module docstring; every component that lacks them is reported at once."""
    run = RunDir(run_dir)
    chosen = load_checkpoint(ckpt) if ckpt is not None else None
    loaded, missing = {}, []
    for name, component in components.items():
        if not has_params(component):
            loaded[name] = LoadedWeights(name, None, source="none")
            continue
        path, use_ema = _chosen_file(chosen, name, ema)
        stages = stages_training(recipe, name)
        if path is None:
            found = run.find_weights(name, stages, prefer_ema=ema)
            if found is not None:
                path, use_ema = found.path, found.ema
        if path is None:
            path = run.given_weights(name)
        if path is not None:
            load_state(component, load_weights(path), str(path))
            loaded[name] = LoadedWeights(name, path, use_ema)
        elif recipe.components[name].get("pretrained") not in (None, False):
            loaded[name] = LoadedWeights(name, None, source="pretrained")
        else:
            missing.append(_missing(name, stages, run, recipe))
    if missing:
        where = f" (run dir {run.root}" + (f", ckpt {ckpt}" if ckpt else "") + ")"
        raise MissingWeightsError("refusing to sample from untrained weights" + where + ":\n  "
                                  + "\n  ".join(missing))
    return loaded
