"""A training stage's settings, read from one entry of the recipe's ``train:`` list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UsageError
from ..yamlio import to_plain


@dataclass(frozen=True)
class EMAConfig:
    """ema-pytorch's knobs. ``power`` 3/4 suits short runs; 2/3 runs of a million steps
    (the decay ramps up to ``beta`` as steps pass, so early EMA weights are not stale)."""

    beta: float = 0.999
    update_after_step: int = 0
    update_every: int = 1
    power: float = 3 / 4


@dataclass(frozen=True)
class OptimizerConfig:
    type: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    momentum: float = 0.0  # sgd only


@dataclass(frozen=True)
class ScheduleConfig:
    type: str = "constant"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass(frozen=True)
class StageConfig:
    name: str
    objective: Mapping[str, Any]
    trains: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    init_from: str | None = None
    max_steps: int = 1000
    batch_size: int = 16
    duration: float | None = None  # seconds per example in this stage; None: the recipe's audio.duration
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    seed: int = 0
    optimizer: OptimizerConfig = OptimizerConfig()
    optimizers: Mapping[str, OptimizerConfig] = field(default_factory=dict)
    lr_schedule: ScheduleConfig = ScheduleConfig()
    ema: EMAConfig | None = None
    checkpoint_every: int = 500
    validate_every: int = 0
    keep_last: int = 2
    milestones: tuple[int, ...] = ()
    max_nonfinite: int = 5
    num_workers: int = 0
    log_every: int = 10

    def audio_for(self, audio: Any) -> Any:
        """The recipe's AudioConfig with this stage's ``duration``, when it has one; raises
        RecipeError naming ``train.<stage>.duration`` when that length cannot work."""
        return audio if self.duration is None else audio.with_duration(self.duration, f"train.{self.name}.duration")

    def optimizer_for(self, name: str) -> OptimizerConfig:
        return self.optimizers.get(name, self.optimizer)


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
    if kwargs.get("duration") is not None:  # checked against the audio settings by AudioConfig.with_duration
        kwargs["duration"] = float(kwargs["duration"])
    for key in ("trains", "frozen", "milestones"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return StageConfig(**kwargs)
