"""The run directory: where a recipe's stages keep their checkpoints, logs and samples.

    runs/<recipe>/                 default; --run-dir DIR on train, sample and eval
      <stage>/
        recipe.resolved.yaml       the recipe this stage ran with
        checkpoints/step-<N>/      <component>.safetensors, <component>.ema.safetensors,
                                   state.json, state.pt  (see tta_core.checkpoint)
        checkpoints/latest
        logs/                      metrics.jsonl and TensorBoard events
        samples/                   validation clips and spectrograms
      weights/<component>.safetensors   weights of components no stage trains (an imported
                                   text encoder or vocoder, say), used when no stage has any

Weights of a component are found in the latest checkpoint of the last stage (in recipe
order) that trains it; the EMA copy is preferred when the stage kept one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typing import Any, Mapping

from .checkpoint import Checkpoint, latest_checkpoint


def has_params(component: Any) -> bool:
    """Whether a component has weights to train and load (Griffin-Lim and processes do not)."""
    import torch

    return isinstance(component, torch.nn.Module) and any(True for _ in component.parameters())


def stages_training(recipe: Any, name: str) -> list[str]:
    """The stages of the recipe whose ``trains:`` lists component ``name``, in order."""
    return [s.get("name") for s in (recipe.get("train") or [])
            if isinstance(s, Mapping) and name in (s.get("trains") or [])]


def default_run_dir(recipe: Any) -> Path:
    """The recipe's ``run_dir:`` (a relative one is taken from the recipe file's folder, so a
    run directory can hold its own recipe), else ``runs/<recipe name>``. ``recipe`` is a
    Recipe, or a recipe name."""
    if isinstance(recipe, str):
        return Path("runs") / recipe
    value = recipe.get("run_dir")
    if value:
        path = Path(value).expanduser()
        if not path.is_absolute() and getattr(recipe, "path", None):
            path = Path(recipe.path).parent / path
        return path
    return Path("runs") / recipe.name


def weights_file(component: str, ema: bool = False) -> str:
    return f"{component}.ema.safetensors" if ema else f"{component}.safetensors"


@dataclass(frozen=True)
class FoundWeights:
    component: str
    stage: str
    checkpoint: Checkpoint
    ema: bool

    @property
    def path(self) -> Path:
        return self.checkpoint.path / weights_file(self.component, self.ema)

    def load(self, device: str = "cpu") -> dict:
        return self.checkpoint.weights(weights_file(self.component, self.ema)[: -len(".safetensors")], device)


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def checkpoints(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoints"

    def latest(self, stage: str) -> Checkpoint | None:
        return latest_checkpoint(self.checkpoints(stage))

    def given_weights(self, component: str) -> Path | None:
        """``weights/<component>.safetensors``: weights the run was given rather than trained."""
        path = self.root / "weights" / weights_file(component)
        return path if path.is_file() else None

    def find_weights(self, component: str, stages: list[str], prefer_ema: bool = True) -> FoundWeights | None:
        """The newest weights of ``component`` among ``stages`` (searched last to first)."""
        for stage in reversed(stages):
            ckpt = self.latest(stage)
            if ckpt is None:
                continue
            for ema in ((True, False) if prefer_ema else (False,)):
                if (ckpt.path / weights_file(component, ema)).exists():
                    return FoundWeights(component, stage, ckpt, ema)
        return None
