"""The objective contract: what a training stage computes.

An objective is registered under the ``objective`` kind and built from the stage's
``objective: {type: ..., ...}`` node. The trainer owns everything around it (devices,
processes, precision, accumulation, clipping, optimizers, EMA, checkpoints, logs); the
objective owns the math.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ..recipe import Recipe
    from .stage import StageConfig


@dataclass
class StageContext:
    """What an objective gets in ``setup``.

    components: every component of the recipe by name, built and on the device; those in the
        stage's ``trains`` have gradients on and are in train mode (wrapped for distributed
        training when there is more than one process: call them, and use
        ``unwrap(name)`` to reach their attributes); ``frozen`` ones are in eval mode
        without gradients, loaded from earlier stages.
    roles: kind -> component name for the recipe's components (the unique one of each
        kind, or the recipe's ``sample:`` choice).
    barrier(): returns once every process reached it (after work only rank 0 does, such as
        filling a cache).
    """

    recipe: "Recipe"
    stage: "StageConfig"
    components: dict[str, Any]
    roles: dict[str, str]
    trains: tuple[str, ...]
    audio: Any  # the stage's examples: the recipe's audio settings, with the stage's duration if it has one
    device: "torch.device"
    run_dir: Path
    registry: Any
    unwrapped: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, Any] = field(default_factory=dict)  # name -> EMA copy, for validation
    world_size: int = 1
    rank: int = 0
    barrier: Any = lambda: None  # waits for every process (work only the main one does)
    cache_audio: Any = None  # the recipe's audio settings, under which `prepare` cached whole-clip mels
                             # (None: ``audio``); a stage's examples are cropped from those
    progress: bool = True  # report long work (filling a cache) with tta_core.progress; off: say nothing

    def __post_init__(self) -> None:
        if self.cache_audio is None:
            self.cache_audio = self.audio

    def role(self, kind: str) -> Any:
        """The component filling ``kind`` (e.g. "autoencoder"); a clear error when none does."""
        from ..errors import UsageError

        if kind not in self.roles:
            raise UsageError(f"stage '{self.stage.name}' needs a {kind} component, and the recipe has none")
        return self.components[self.roles[kind]]

    def unwrap(self, name: str) -> Any:
        return self.unwrapped.get(name, self.components[name])


@runtime_checkable
class Objective(Protocol):
    """A training stage.

    ``setup(ctx: StageContext) -> None``: called once, before any step.
    ``train_dataset(ctx) -> torch.utils.data.Dataset`` of dict items; ``collate(items)``
        (optional) batches them (default: torch's default_collate).
    ``parameter_groups(ctx) -> dict[str, list[Parameter]]``: the parameters each optimizer
        steps, by optimizer name (one ``"main"`` optimizer over every trained component is
        what most objectives need; the VAE-GAN objective has ``generator`` and
        ``discriminator``).
    Optional ``modules() -> dict[str, nn.Module]``: trainable modules the objective owns (a
        discriminator), built in its constructor. The trainer moves, wraps, trains and
        checkpoints them, and passes them in ``ctx.components`` under these names: use
        them from there (the wrapped module synchronises gradients across processes).
    ``losses(batch, step, generator) -> dict[str, Tensor]``: for one micro-batch, a scalar
        loss per optimizer name to step this iteration (leave a name out to skip its step,
        e.g. the discriminator before its start step); keys starting with ``log/`` are
        logged only. All randomness must come from ``generator`` (noise, timesteps,
        caption dropout), which the trainer seeds from (seed, step, micro-batch, rank), so
        that a resumed run draws exactly what an uninterrupted one would.
    Optional: ``validate(ctx, out_dir: Path) -> dict`` (write a few clips and spectrograms
        into ``out_dir``, return metrics); ``collate(items)``.
    Optional ``parked(ctx, device) -> list[str]``: the frozen components that wait off
        ``device`` while the steps run (a frozen autoencoder once its latents are cached):
        ``plan`` leaves their weights out of that device's peak.
    """

    def setup(self, ctx: StageContext) -> None: ...

    def train_dataset(self, ctx: StageContext) -> Any: ...

    def parameter_groups(self, ctx: StageContext) -> Mapping[str, list]: ...

    def losses(self, batch: Any, step: int, generator: "torch.Generator") -> Mapping[str, "torch.Tensor"]: ...
