"""A training stage's settings, read from one entry of the recipe's ``train:`` list.

These dataclasses are the stage schema: the recipe validator reads its keys, types and ranges
(``Annotated[..., Range(...)]``) from their fields (tta_core.recipe.fields_spec), so a new
setting is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

from ..adapters import AdapterConfig, parse_adapter
from ..errors import UsageError
from ..precision import Precision
from ..recipe import Component, Fraction, Positive, Range, Ref
from ..registry import KINDS
from ..yamlio import to_plain

_AtLeast0 = Annotated[int, Range(min=0)]
_AtLeast1 = Annotated[int, Range(min=1)]
_NonNegative = Annotated[float, Range(min=0)]
_Component = Annotated[str, Ref(*KINDS)]


@dataclass(frozen=True)
class EMAConfig:
    """ema-pytorch's knobs. ``power`` 3/4 suits short runs; 2/3 runs of a million steps
    (the decay ramps up to ``beta`` as steps pass, so early EMA weights are not stale)."""

    beta: Fraction = 0.999
    update_after_step: _AtLeast0 = 0
    update_every: _AtLeast1 = 1
    power: Positive = 3 / 4


@dataclass(frozen=True)
class OptimizerConfig:
    """``adafactor`` (transformers' Adafactor, CPU and CUDA) keeps a factored second moment
    (a row and a column statistic per matrix) and no first moment: its state is a small
    fraction of Adam's two full copies of the trained weights, the memory-light choice for
    large denoisers. It takes ``lr`` (a fixed rate, scheduled like the others) and
    ``weight_decay``; ``betas``, ``eps`` and ``momentum`` are not its knobs."""

    type: Literal["adamw", "adam", "sgd", "adafactor"] = "adamw"
    lr: Positive = 1e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)  # adam, adamw
    weight_decay: _NonNegative = 0.0
    eps: Positive = 1e-8  # adam, adamw
    momentum: _NonNegative = 0.0  # sgd only


@dataclass(frozen=True)
class ScheduleConfig:
    type: Literal["constant", "cosine", "linear"] = "constant"  # the shape after warmup
    warmup_steps: _AtLeast0 = 0
    min_lr_ratio: Fraction = 0.0


@dataclass(frozen=True)
class StageConfig:
    name: str
    objective: Annotated[Mapping[str, Any], Component("objective")]
    trains: tuple[_Component, ...] = ()
    frozen: tuple[_Component, ...] = ()
    init_from: str | None = None
    max_steps: _AtLeast0 = 1000  # 0: the starting weights, written as step 0
    batch_size: _AtLeast1 = 16
    duration: Annotated[float | None, Range(above=0)] = None  # seconds per example here; None: audio.duration
    grad_accum: _AtLeast1 = 1
    grad_clip: Positive | None = 1.0
    precision: Precision = "fp32"
    seed: _AtLeast0 = 0
    optimizer: OptimizerConfig = OptimizerConfig()
    optimizers: Mapping[str, OptimizerConfig] = field(default_factory=dict)  # per optimizer, by the objective's names
    lr_schedule: ScheduleConfig = ScheduleConfig()
    ema: EMAConfig | None = None
    # LoRA/DoRA on the trained components (or adapters.components): only the adapters train,
    # checkpoints hold only them (<component>.adapter.safetensors)
    adapters: AdapterConfig | None = None
    checkpoint_every: _AtLeast1 = 500
    validate_every: _AtLeast0 = 0  # 0: no validation
    keep_last: _AtLeast1 = 2
    milestones: tuple[_AtLeast1, ...] = ()
    max_nonfinite: _AtLeast1 = 5
    num_workers: _AtLeast0 = 0
    log_every: _AtLeast1 = 10

    def audio_for(self, audio: Any) -> Any:
        """The recipe's AudioConfig with this stage's ``duration``, when it has one; raises
        RecipeError naming ``train.<stage>.duration`` when that length cannot work."""
        return audio if self.duration is None else audio.with_duration(self.duration, f"train.{self.name}.duration")

    def optimizer_for(self, name: str) -> OptimizerConfig:
        return self.optimizers.get(name, self.optimizer)

    @property
    def adapted(self) -> tuple[str, ...]:
        """The components that train an adapter in this stage (none without ``adapters:``)."""
        if self.adapters is None:
            return ()
        return self.adapters.components or self.trains


def _sub(cls, value: Any, where: str):
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} must be a mapping")
    known = set(cls.__dataclass_fields__)
    unknown = set(value) - known
    if unknown:
        raise UsageError(f"{where}: unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    kwargs = dict(value)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return cls(**kwargs)


def parse_stage(raw: Mapping[str, Any]) -> StageConfig:
    """A validated recipe stage as a StageConfig (defaults filled in)."""
    raw = to_plain(raw)
    kwargs = dict(raw)
    name = kwargs["name"]
    if "optimizer" in kwargs:
        kwargs["optimizer"] = _sub(OptimizerConfig, kwargs["optimizer"], f"train.{name}.optimizer")
    if "optimizers" in kwargs:
        kwargs["optimizers"] = {
            k: _sub(OptimizerConfig, {**to_plain(raw.get("optimizer") or {}), **v}, f"train.{name}.optimizers.{k}")
            for k, v in kwargs["optimizers"].items()
        }
    if "lr_schedule" in kwargs:
        kwargs["lr_schedule"] = _sub(ScheduleConfig, kwargs["lr_schedule"], f"train.{name}.lr_schedule")
    if kwargs.get("ema") is not None:  # ema: null (e.g. from --set) means no EMA
        kwargs["ema"] = _sub(EMAConfig, kwargs["ema"], f"train.{name}.ema")
    if "adapters" in kwargs:
        kwargs["adapters"] = parse_adapter(to_plain(kwargs["adapters"]), f"train.{name}.adapters")
        stray = [c for c in (kwargs["adapters"].components if kwargs["adapters"] else ()) if c not in kwargs.get("trains", ())]
        if stray:
            raise UsageError(f"train.{name}.adapters.components: {', '.join(stray)} not in the stage's trains: "
                             f"list them in trains: too (they train their adapters only)")
    if kwargs.get("duration") is not None:  # checked against the audio settings by AudioConfig.with_duration
        kwargs["duration"] = float(kwargs["duration"])
    for key in ("trains", "frozen", "milestones"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return StageConfig(**kwargs)
