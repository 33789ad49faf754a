"""Will it fit: what each training stage and sampling of a recipe needs, before a GPU is rented.

:func:`plan_recipe` builds every component at the recipe's real size (with random weights
where the pretrained ones are not on this machine: nothing is downloaded) and, per training
stage and for sampling, reports the parameters (trained, frozen, EMA copies), the estimated
peak memory on the target device, and the time of one step measured on this machine.

How the peak is estimated (bytes of tensors; allocator rounding and scratch buffers are not
counted, which is why a stage fits a limit only with :data:`HEADROOM` to spare):

- weights: every component the trainer puts on the device, and the modules the objective
  owns (a discriminator), at the dtype they are kept in: fp32 masters under bf16/fp16 autocast;
- gradients: one fp32 copy of every trained parameter;
- optimizer: Adam/AdamW keep two fp32 states per trained parameter, SGD with momentum one;
- EMA: one fp32 copy of each trained component;
- activations: one training step (the objective's own ``losses`` and a backward, under the
  stage's precision) on a synthetic batch of the stage's shape (random log-mels and waveforms
  of the stage's example length, a typical caption), run on fake tensors
  (:func:`tta_core.memory.peak_bytes`: shapes, no data, so it costs no memory and the same
  seconds at any batch), every tensor counted as it lives, at batch 1 and at the stage's batch
  B. Activations grow linearly with the batch; a smaller micro-batch a suggestion tries is
  read off the line between the two. Less the gradients counted above, that is the estimate.
  The step runs at the stage's last step, so a part that starts late (a discriminator) is on.
  An objective whose step needs its data (``.item()``, a Python branch on a tensor) cannot
  run on fake tensors: its step then runs for real at batch 1 and 2 (after one unmeasured
  call, for what a first call makes once; :func:`tta_core.memory.measured_bytes`) and is
  scaled linearly to B. The report says which was done.

Sampling: the weights of the sample graph plus the peak of one batch of the recipe's
``sample:`` settings (a guided denoiser call, then decoding), estimated on fake tensors
(:func:`tta_core.sampling.estimate.memory_needed`).

The steps run on the target device when this machine has it, else on the CPU, which stands
in for it (the tensors a step makes are the same; a note says so). Under ``--memory`` the
settings that bring a stage under the limit are tried in order of least harm: bf16, gradient
checkpointing of the trained networks, a smaller micro-batch with ``grad_accum`` keeping the
global batch, frozen parts off the device, a memory-light optimizer (the last two where the
stage schema offers them); each is estimated as above and the first combination that fits
is given as ``--set`` lines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import TtaError, UsageError

log = logging.getLogger("tta.plan")

#: The share of a memory limit an estimate may take and still fit: allocators round and
#: cache blocks, libraries keep scratch buffers (cuDNN workspaces), CUDA keeps its context.
HEADROOM = 0.9

#: A caption of AudioCaps' typical length, for the text encoder's share of a step.
CAPTION = "a man speaks while a dog barks and rain falls on a metal roof in the distance"

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``"24GB"``, ``"24 GiB"``, ``"512MB"`` as bytes (GB = 10**9, GiB = 2**30); UsageError else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]|[bB])\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--memory takes a size with its unit, e.g. --memory 24GB, --memory 80GiB or "
                         f"--memory 512MB; got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


# -- the report ---------------------------------------------------------------------------------


@dataclass
class ComponentPlan:
    """One component as a stage (or sampling) holds it."""

    name: str
    type: str
    role: str  # trained, frozen or ema
    params: int | None  # None: not built
    bytes: int = 0
    random_weights: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "role": self.role, "params": self.params,
                "bytes": self.bytes, "random_weights": self.random_weights, "note": self.note}


@dataclass
class StagePlan:
    name: str
    components: list[ComponentPlan]
    batch_size: int
    precision: str
    duration: float
    estimated_peak_bytes: int | None = None
    breakdown: dict[str, int] = field(default_factory=dict)
    measured_step_seconds: float | None = None
    measured_at_batch: int | None = None
    fits: bool | None = None
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    grad_accum: int = 1

    def to_dict(self) -> dict:
        return {"name": self.name, "components": [c.to_dict() for c in self.components],
                "batch_size": self.batch_size, "grad_accum": self.grad_accum, "precision": self.precision,
                "duration": self.duration, "estimated_peak_bytes": self.estimated_peak_bytes,
                "breakdown": dict(self.breakdown), "measured_step_seconds": self.measured_step_seconds,
                "measured_at_batch": self.measured_at_batch, "fits": self.fits,
                "suggestions": list(self.suggestions), "notes": list(self.notes)}


@dataclass
class SamplingPlan:
    components: list[ComponentPlan]
    batch_size: int | None
    precision: str
    duration: float | None
    steps: int | None = None
    estimated_peak_bytes: int | None = None
    breakdown: dict[str, int] = field(default_factory=dict)
    measured_step_seconds: float | None = None
    measured_at_batch: int | None = None
    fits: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"components": [c.to_dict() for c in self.components], "batch_size": self.batch_size,
                "precision": self.precision, "duration": self.duration, "steps": self.steps,
                "estimated_peak_bytes": self.estimated_peak_bytes, "breakdown": dict(self.breakdown),
                "measured_step_seconds": self.measured_step_seconds, "measured_at_batch": self.measured_at_batch,
                "fits": self.fits, "notes": list(self.notes)}


@dataclass
class Plan:
    recipe: str
    device: str
    measured_on: str
    memory_limit: int | None
    stages: list[StagePlan]
    sampling: SamplingPlan | None

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "device": self.device, "measured_on": self.measured_on,
                "memory_limit": self.memory_limit, "stages": [s.to_dict() for s in self.stages],
                "sampling": self.sampling.to_dict() if self.sampling is not None else None}


# -- building at real size ------------------------------------------------------------------------


def _nbytes(module: Any) -> tuple[int, int]:
    """(parameters, their bytes) of a module; (0, 0) for what is not one."""
    import torch

    if not isinstance(module, torch.nn.Module):
        return 0, 0
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def _takes(registry: Any, kind: str, node: Any, argument: str) -> bool:
    from .recipe import signature_of

    params, _, var_kw = signature_of(registry.get(kind, node["type"]).load())
    return var_kw if params is None else argument in params


def absent_pretrained(node: Any) -> str | None:
    """The ``pretrained:`` source of a component node when it is not a file or folder on this
    machine (a hub id, a copy not yet made), else None."""
    pretrained = node.get("pretrained") if isinstance(node, dict) else None
    if isinstance(pretrained, str) and not Path(pretrained).expanduser().exists():
        return pretrained
    return None


def random_weight_overrides(recipe: Any, registry: Any) -> list[str]:
    """``--set`` lines that build every component whose pretrained weights are not on this
    machine with random weights instead (where its factory takes ``random_weights``), as
    ``plan`` builds them."""
    from .recipe import component_kind
    from .yamlio import to_plain

    lines = []
    for name, node in recipe.components.items():
        node = to_plain(node)
        if absent_pretrained(node) and _takes(registry, component_kind(recipe, name, registry), node, "random_weights"):
            lines.append(f"components.{name}.random_weights=true")
    return lines


class _Components:
    """The recipe's components, built once each at real size, random weights where the
    pretrained ones are not on this machine; a node changed by a candidate setting (gradient
    checkpointing) is built anew in place of the old one."""

    def __init__(self, recipe: Any, registry: Any, device: Any):
        from .recipe import component_kind

        self.recipe, self.registry, self.device = recipe, registry, device
        self.kinds = {name: component_kind(recipe, name, registry) for name in recipe.components}
        self._built: dict[str, tuple[str, Any, ComponentPlan]] = {}
        self._infos: dict[str, ComponentPlan] = {}

    def node(self, name: str, extra: dict | None = None) -> dict:
        from .yamlio import to_plain

        return {**to_plain(self.recipe.components[name]), **(extra or {})}

    def get(self, name: str, extra: dict | None = None, adapters: Any = None) -> tuple[Any, ComponentPlan]:
        """(the built component or None, what the report says of it); ``adapters``: an
        AdapterConfig to put on it (a stage that trains adapters)."""
        node = self.node(name, extra)
        key = repr((sorted(node.items(), key=lambda kv: kv[0]), adapters))
        if name in self._built and self._built[name][0] == key:
            return self._built[name][1:]
        self._built.pop(name, None)  # the old build is let go before a new one is made
        built, info = self._build(name, node)
        if adapters is not None and built is not None:
            from .adapters import add_adapter

            add_adapter(built, adapters)
        self._built[name] = (key, built, info)
        self._infos[name] = info
        return built, info

    def info(self, name: str) -> ComponentPlan:
        """What the report says of a component (its parameters do not change with a setting such
        as gradient checkpointing), built only when it has never been."""
        return self._infos[name] if name in self._infos else self.get(name)[1]

    def _build(self, name: str, node: dict) -> tuple[Any, ComponentPlan]:
        import torch

        from .recipe import build

        kind = self.kinds[name]
        info = ComponentPlan(name, str(node["type"]), "frozen", None)
        pretrained = absent_pretrained(node)
        if pretrained:
            if not _takes(self.registry, kind, node, "random_weights"):
                info.note = (f"not built: {pretrained} is not on this machine, and {node['type']} cannot build "
                             "its network with random weights (no random_weights argument)")
                return None, info
            node = {**node, "random_weights": True}
            info.random_weights = True
            info.note = f"{pretrained} not found locally"
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                built = build(node, kind, self.registry, where=f"components.{name}", audio=self.recipe.audio)
        except (TtaError, OSError, ImportError, RuntimeError) as exc:
            info.note = f"not built: {str(exc).splitlines()[0]}"
            return None, info
        if isinstance(built, torch.nn.Module):
            built.to(self.device)
        info.params, info.bytes = _nbytes(built)
        return built, info

    def drop(self, name: str) -> None:
        self._built.pop(name, None)


# -- one stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """The settings one estimate of a stage is made under (a candidate changes some)."""

    precision: str  # resolved: fp32, bf16 or fp16
    batch_size: int
    grad_accum: int
    checkpointing: tuple[str, ...] = ()  # components built with gradient_checkpointing: true
    offload: bool = False  # frozen parts kept off the device
    optimizer: str | None = None  # a memory-light optimizer type in place of the stage's


@dataclass
class _Trial:
    """What a stage's trial steps counted: the tensor peak of a step at each batch size tried
    (``method`` says how: on fake tensors, or run for real at 1 and 2), and the parameters."""

    peaks: dict[int, int]
    method: str  # "fake" or "real"
    weights: int  # every module the stage puts on the device
    frozen: int  # of which frozen (what offloading would take off the device)
    groups: dict[str, list[tuple[int, ...]]]  # optimizer name -> its parameters' shapes
    ema: int
    components: list[ComponentPlan]
    seconds: float | None = None


def _synthetic_batch(objective: Any, audio: Any, n: int, device: Any) -> Any:
    """A collated batch of ``n`` examples as the data layer makes them (tta_core.data.dataset):
    a random log-mel [1, T, F] and waveform of the stage's length, a caption."""
    import torch

    from .data.dataset import collate as default_collate

    g = torch.Generator().manual_seed(0)
    shape = (audio.num_samples,) if audio.channels == 1 else (audio.channels, audio.num_samples)
    items = [{"id": f"plan-{i}", "caption": CAPTION, "label": None, "index": i,
              "mel": torch.randn(1, audio.num_frames, audio.mel.n_mels, generator=g) * 2 - 5,
              "wave": torch.randn(*shape, generator=g) * 0.1} for i in range(n)]
    batch = getattr(objective, "collate", default_collate)(items)
    from .training.engine import to_device

    return to_device(batch, device)


def _step_fn(objective: Any, step: int, device: Any, precision: str):
    import torch

    from .precision import autocast_dtype

    dtype = autocast_dtype(precision)

    def run(batch: Any) -> None:
        cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with cast:
            out = objective.losses(batch, step, torch.Generator(device=device).manual_seed(0))
        sum(v.float().sum() for k, v in out.items() if not k.startswith("log/")).backward()
    return run


class _StagePlanner:
    """Estimates of one stage under any :class:`_Setting`; the real steps behind them run
    once per (precision, checkpointing) and are reused for every batch size."""

    def __init__(self, recipe: Any, registry: Any, stage: Any, components: _Components, measure: bool,
                 target: Any):
        self.recipe, self.registry, self.stage = recipe, registry, stage
        self.target = target  # the device planned for (components.device runs the steps)
        self.components, self.measure = components, measure
        self.audio = stage.audio_for(recipe.audio)
        self._trials: dict[tuple[str, tuple[str, ...]], _Trial] = {}

    def trial(self, setting: _Setting) -> _Trial:
        key = (setting.precision, setting.checkpointing)
        if key not in self._trials:
            self._trials[key] = self._run_trial(setting, timed=self.measure and not self._trials)
        return self._trials[key]

    def _setup(self, setting: _Setting) -> tuple[Any, Any, dict, list[ComponentPlan]]:
        import torch

        from .recipe import build
        from .roles import resolve_roles
        from .training.objective import StageContext

        stage, device = self.stage, self.components.device
        built, infos = {}, []
        for name in self.recipe.components:
            extra = {"gradient_checkpointing": True} if name in setting.checkpointing else None
            module, info = self.components.get(name, extra, stage.adapters if name in stage.adapted else None)
            info = replace(info, role="trained" if name in stage.trains else "frozen")
            infos.append(info)
            if module is None:
                continue
            built[name] = module
            if isinstance(module, torch.nn.Module):
                module.train(name in stage.trains)
                if name in stage.adapted:  # the adapters alone train
                    from .adapters import adapter_parameters

                    module.requires_grad_(False)
                    for p in adapter_parameters(module):
                        p.requires_grad_(True)
                else:
                    module.requires_grad_(name in stage.trains)
        objective = build(stage.objective, "objective", self.registry, where=f"train.{stage.name}.objective")
        extra = dict(objective.modules()) if hasattr(objective, "modules") else {}
        for name, module in extra.items():
            module.to(device).train()
            count, size = _nbytes(module)
            infos.append(ComponentPlan(name, type(module).__name__, "trained", count, size,
                                       note=f"owned by the {stage.objective['type']} objective"))
        roles = {r: n for r, n in resolve_roles(self.recipe, self.registry, strict=False).items() if n in built}
        ctx = StageContext(recipe=self.recipe, stage=stage, components={**built, **extra}, roles=roles,
                           trains=stage.trains, audio=self.audio, device=device, run_dir=self.recipe.run_dir,
                           registry=self.registry, progress=False)
        objective.setup(ctx)
        return objective, ctx, {**built, **extra}, infos

    def _run_trial(self, setting: _Setting, timed: bool) -> _Trial:
        from .memory import step_peaks

        objective, ctx, modules, infos = self._setup(setting)
        groups = {name: list(params) for name, params in objective.parameter_groups(ctx).items()}
        device, stage = self.components.device, self.stage
        run = _step_fn(objective, max(0, stage.max_steps - 1), device, setting.precision)
        peaks, method = step_peaks(run, lambda n: _synthetic_batch(objective, self.audio, n, device),
                                   (1, max(2, stage.batch_size)), (1, 2), (objective, *modules.values()), _cuda(device))
        trained = {n for n in stage.trains if n in modules} | {n for n in modules if n not in self.recipe.components}
        parked = set(objective.parked(ctx, self.target)) - trained if hasattr(objective, "parked") else set()
        weights = sum(_nbytes(m)[1] for n, m in modules.items() if n not in parked)
        frozen = sum(_nbytes(m)[1] for n, m in modules.items() if n not in trained and n not in parked)
        ema = sum(_nbytes(modules[n])[1] for n in stage.trains if n in modules) if stage.ema is not None else 0
        if ema:
            infos += [ComponentPlan(f"{c.name}.ema", c.type, "ema", c.params, c.bytes, c.random_weights,
                                    "EMA copy (fp32)") for c in infos if c.role == "trained" and c.name in stage.trains
                      and c.params]
        infos = [replace(c, note=f"waits on the CPU while the steps train from cached latents{'; ' + c.note if c.note else ''}")
                 if c.name in parked else c for c in infos]
        trial = _Trial(peaks, method, weights, frozen, {n: [tuple(p.shape) for p in ps] for n, ps in groups.items()},
                       ema, infos)
        if timed:
            trial.seconds = _time_step(run, _synthetic_batch(objective, self.audio, 1, device), groups, stage, device)
        return trial

    def estimate(self, setting: _Setting) -> tuple[int, dict[str, int]]:
        """(peak bytes, breakdown) of the stage under ``setting``."""
        from .memory import peak_at

        trial = self.trial(setting)
        grads = 4 * sum(math.prod(shape) for shapes in trial.groups.values() for shape in shapes)
        optimizer = sum(_optimizer_bytes(self.stage.optimizer_for(name), setting.optimizer, shapes)
                        for name, shapes in trial.groups.items())
        steps = peak_at(trial.peaks, setting.batch_size)
        breakdown = {"weights": trial.weights - (trial.frozen if setting.offload else 0), "gradients": grads,
                     "optimizer": optimizer, "ema": trial.ema, "activations": max(0, steps - grads)}
        return sum(breakdown.values()), breakdown


def _cuda(device: Any) -> list:
    return [device] if device.type == "cuda" else []


def _optimizer_bytes(cfg: Any, kind: str | None, shapes: list[tuple[int, ...]]) -> int:
    """Bytes of optimizer state for parameters of ``shapes``: the stage's optimizer, or
    ``kind`` in its place (a memory-light one a suggestion tries)."""
    from dataclasses import replace as with_type

    from .training.engine import optimizer_state_bytes

    return optimizer_state_bytes(with_type(cfg, type=kind) if kind else cfg, shapes)


def _time_step(run: Any, batch: Any, groups: dict[str, list], stage: Any, device: Any) -> float:
    """Seconds of one training step at batch 1: forward, backward and the optimizers' step."""
    from .training.engine import make_optimizer

    optimizers = [make_optimizer(stage.optimizer_for(name), params) for name, params in groups.items() if params]
    _sync(device)
    started = time.perf_counter()
    run(batch)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - started


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- what brings a stage under a limit ------------------------------------------------------------


def _schema_choice(words: tuple[str, ...]) -> str | None:
    """A memory-light optimizer type the stage schema offers (its ``optimizer.type`` choices)."""
    from .training.stage import OptimizerConfig

    choices = typing.get_args(typing.get_type_hints(OptimizerConfig)["type"])
    return next((c for c in choices if any(w in str(c).lower() for w in words)), None)


def _offload_field() -> str | None:
    """The stage setting that keeps frozen parts off the device, where the schema has one."""
    from .training.stage import StageConfig

    return next((f for f in StageConfig.__dataclass_fields__ if "offload" in f), None)


class _Search:
    """Candidate settings in order of least harm; the first combination under the limit."""

    def __init__(self, planner: _StagePlanner, limit: int, bf16_ok: bool):
        self.planner, self.limit, self.bf16_ok = planner, limit, bf16_ok
        self.name = planner.stage.name

    def fits(self, setting: _Setting) -> bool:
        return self.planner.estimate(setting)[0] <= self.limit * HEADROOM

    def run(self, base: _Setting) -> tuple[list[str], int]:
        """(the --set lines of the first combination that fits, or [] when none does; the
        estimate of the last combination tried: the least this stage can need). A smaller
        micro-batch is tried once the changes that cost nothing (bf16, checkpointing) are in."""
        s, sets = base, []
        free, costly = self._candidates()
        for change, lines in free:
            s = change(s)
            sets += lines
            if self.fits(s):
                return sets, self.planner.estimate(s)[0]
        for change, lines in [(lambda s: s, []), *costly]:
            s = change(s)
            sets += lines
            if self.fits(s):
                return sets, self.planner.estimate(s)[0]
            shrunk = self._smaller_batch(s)
            if shrunk is not None:
                return sets + shrunk[1], self.planner.estimate(shrunk[0])[0]
        return [], self.planner.estimate(self._smallest(s))[0]

    def _candidates(self) -> tuple[list, list]:
        """(changes that cost nothing but speed, changes with a cost): (setting -> setting, --set lines)."""
        stage, components = self.planner.stage, self.planner.components
        free, costly = [], []
        if self.bf16_ok:
            free.append((lambda s: replace(s, precision="bf16"), [f"train.{self.name}.precision=bf16"]))
        names = tuple(n for n in stage.trains if n in components.kinds
                      and not components.node(n).get("gradient_checkpointing")
                      and _takes(components.registry, components.kinds[n], components.node(n), "gradient_checkpointing"))
        if names:
            free.append((lambda s: replace(s, checkpointing=names),
                         [f"components.{n}.gradient_checkpointing=true" for n in names]))
        offload = _offload_field()
        if offload and stage.frozen:
            costly.append((lambda s: replace(s, offload=True), [f"train.{self.name}.{offload}=true"]))
        light = _schema_choice(("8bit", "adafactor"))
        if light and stage.optimizer.type in ("adam", "adamw"):
            costly.append((lambda s: replace(s, optimizer=light), [f"train.{self.name}.optimizer.type={light}"]))
        return free, costly

    def _smaller_batch(self, s: _Setting) -> tuple[_Setting, list[str]] | None:
        """The largest micro-batch that fits, ``grad_accum`` raised to keep the global batch."""
        for b in sorted((d for d in range(1, s.batch_size) if s.batch_size % d == 0), reverse=True):
            candidate = replace(s, batch_size=b, grad_accum=s.grad_accum * (s.batch_size // b))
            if self.fits(candidate):
                return candidate, [f"train.{self.name}.batch_size={b}",
                                   f"train.{self.name}.grad_accum={candidate.grad_accum}"]
        return None

    def _smallest(self, s: _Setting) -> _Setting:
        return replace(s, batch_size=1, grad_accum=s.grad_accum * s.batch_size)


# -- the plan -------------------------------------------------------------------------------------


def _devices(device: str | None) -> tuple[Any, Any]:
    """(the device planned for, the device the steps run on: it, or the CPU standing in)."""
    import torch

    if device in (None, "auto"):
        target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            target = torch.device(device)
        except RuntimeError:
            target = None
        if target is None or target.type not in ("cpu", "cuda"):
            raise UsageError(f"--device takes cpu, cuda, cuda:N or auto, got {device!r}")
    if target.type == "cuda" and torch.cuda.is_available():
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return target, target
    return target, torch.device("cpu")


def _precision(precision: str, target: Any) -> str:
    """A precision resolved for the target device; ``auto`` on a CUDA device this machine does
    not have is bf16 (every GPU since Ampere computes it)."""
    import torch

    from .precision import resolve_precision

    if target.type == "cuda" and not torch.cuda.is_available():
        return "bf16" if precision == "auto" else precision
    with _quiet():
        return resolve_precision(precision, target)


def _bf16_ok(target: Any) -> bool:
    import torch

    from .precision import native_bf16

    return (target.type == "cuda" and not torch.cuda.is_available()) or native_bf16(target)


@contextlib.contextmanager
def _quiet():
    """The warning that bf16 is emulated on this CPU is not news when the CPU stands in for a GPU."""
    logger = logging.getLogger("tta")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def plan_recipe(recipe: Any, *, registry: Any, stage: str | list[str] | None = None, batch_size: int | None = None,
                precision: str | None = None, device: str | None = None, memory: int | str | None = None,
                measure: bool = True, sampling: bool | None = None, _shared: dict | None = None) -> Plan:
    """The plan of a loaded, validated recipe (see the module docstring for how it is made).

    ``stage``: one stage name (or a list) to plan instead of every stage; sampling is planned
    only when no stage is chosen (or ``sampling=True``). ``batch_size`` and ``precision``
    replace the stages' (and sampling's) own. ``device``: the device planned for (cpu, cuda,
    cuda:N; default cuda when this machine has it). ``memory``: a limit in bytes (or text such
    as "24GB"): each stage says whether it fits, and the settings that would make it.
    ``measure=False`` skips the timed step. :func:`plan_limits` plans for several limits."""
    from .training.stage import parse_stage

    stages = [parse_stage(s) for s in (recipe.get("train") or [])]
    names = [s.name for s in stages]
    chosen = [stage] if isinstance(stage, str) else list(stage or [])
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise UsageError(f"no stage named {', '.join(map(repr, unknown))}; stages: {', '.join(names) or '(none)'}")
    limit = parse_memory(memory) if isinstance(memory, str) else memory
    target, run_on = _devices(device)
    shared = {} if _shared is None else _shared  # the networks and the steps counted, kept for the next limit
    components = shared.setdefault("components", _Components(recipe, registry, run_on))
    plans = []
    with _quiet():
        for cfg in stages:
            if not chosen or cfg.name in chosen:
                plans.append(_plan_stage(recipe, registry, cfg, components, target, limit, batch_size,
                                         precision, measure, shared))
        sample = None
        if sampling or (sampling is None and not chosen):
            sample = _plan_sampling(recipe, registry, components, target, limit, precision, measure)
    return Plan(str(recipe.path), str(target), str(run_on), limit, plans, sample)


def plan_limits(recipe: Any, *, registry: Any, limits: list[int | str], **options: Any) -> list[Plan]:
    """:func:`plan_recipe` for each memory limit in ``limits`` (bytes, or text such as "24GB"),
    the networks built and each step counted once for all of them; ``options`` as there."""
    shared: dict = {}
    return [plan_recipe(recipe, registry=registry, memory=limit, _shared=shared, **options) for limit in limits]


def _plan_stage(recipe, registry, cfg, components, target, limit, batch_size, precision, measure,
                shared) -> StagePlan:
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    resolved = _precision(precision or cfg.precision, target)
    audio = cfg.audio_for(recipe.audio)
    out = StagePlan(cfg.name, [], cfg.batch_size, resolved, audio.duration, grad_accum=cfg.grad_accum)
    planner = shared.setdefault(("stage", cfg.name, str(target)),
                                _StagePlanner(recipe, registry, cfg, components, measure, target))
    base = _Setting(resolved, cfg.batch_size, cfg.grad_accum)
    missing = [info for info in _listed(recipe, components, cfg)
               if info.params is None and info.name in (*cfg.trains, *cfg.frozen)]
    if missing:
        out.components = _listed(recipe, components, cfg)
        out.notes.append("not estimated: " + "; ".join(f"{i.name} {i.note}" for i in missing))
        return out
    try:
        trial = planner.trial(base)
    except Exception as exc:  # a component that is not built, an objective that cannot run here
        out.components = _listed(recipe, components, cfg)
        out.notes.append(f"not estimated: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        log.debug("stage %s", cfg.name, exc_info=True)
        return out
    out.components = trial.components
    out.notes.append(f"activations: a training step on fake tensors at batch {' and '.join(map(str, trial.peaks))} "
                     "(no memory used), linear in the batch between" if trial.method == "fake" else
                     "activations: the step needs its data, so it ran for real at batch 1 and 2, scaled to the batch")
    out.estimated_peak_bytes, out.breakdown = planner.estimate(base)
    if trial.seconds is not None:
        out.measured_step_seconds, out.measured_at_batch = trial.seconds, 1
    if limit is not None:
        out.fits = out.estimated_peak_bytes <= limit * HEADROOM
        if not out.fits:
            search = _Search(planner, limit, _bf16_ok(target) and resolved != "bf16")
            sets, least = search.run(base)
            out.suggestions = [f"--set {line}" for line in sets]
            if not sets:
                out.notes.append(f"no combination of the settings tried fits; the least it needs is about "
                                 f"{_fmt(least)} (at batch 1 with every change)")
    return out


def _listed(recipe: Any, components: _Components, cfg: Any) -> list[ComponentPlan]:
    return [replace(components.info(name), role="trained" if name in cfg.trains else "frozen")
            for name in recipe.components]


def _fmt(n: int | None) -> str:
    from .memory import format_bytes

    return "?" if n is None else format_bytes(n)


def _plan_sampling(recipe, registry, components, target, limit, precision, measure) -> SamplingPlan:
    import torch

    from .roles import resolve_roles

    resolved = _precision(precision or "fp32", target)  # tta-run sample's default precision
    out = SamplingPlan([], None, resolved, None)
    try:
        roles = resolve_roles(recipe, registry)
    except UsageError as exc:
        out.notes.append(f"not estimated: {exc}")
        return out
    built = {}
    for role, name in roles.items():
        module, info = components.get(name)
        out.components.append(replace(info, role="frozen"))
        if module is not None:
            built[role] = module
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
    missing = [i for i in out.components if i.params is None]
    if missing:
        out.notes.append("not estimated: " + "; ".join(f"{i.name} {i.note}" for i in missing))
        return out
    try:
        _sampling_estimate(out, recipe, registry, roles, built, components.device, measure)
    except Exception as exc:  # the estimate is a report: one part that cannot run here is said, not raised
        out.notes.append(f"not estimated: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        log.debug("sampling", exc_info=True)
        return out
    if limit is not None and out.estimated_peak_bytes is not None:
        out.fits = out.estimated_peak_bytes <= limit * HEADROOM
    return out


def _sampling_estimate(out: SamplingPlan, recipe, registry, roles, built, device, measure) -> None:
    import torch

    from .diffusion.guidance import guided_denoiser
    from .interfaces import unconditional
    from .sampling.estimate import memory_needed
    from .sampling.pipeline import Pipeline

    if built["autoencoder"].domain == "waveform":
        built.pop("vocoder", None)
    pipe = Pipeline(recipe=recipe, conditioner=built["conditioner"], denoiser=built["denoiser"],
                    process=built["process"], autoencoder=built["autoencoder"], vocoder=built.get("vocoder"),
                    roles=dict(roles), audio=recipe.audio, registry=registry, device=device,
                    precision=out.precision)
    st = pipe.settings()
    out.batch_size, out.duration, out.steps = st.batch_size, st.duration, st.steps
    need = memory_needed(pipe, st, st.batch_size)
    weights = sum(_nbytes(m)[1] for m in built.values())
    out.breakdown = {"weights": weights, "activations": need if need is not None else 0}
    if need is None:
        out.notes.append("the batch's peak could not be estimated on fake tensors; weights only")
    out.estimated_peak_bytes = weights + (need or 0)
    if not measure:
        return
    with torch.no_grad():
        cond = pipe.conditioner.encode_text([CAPTION]).to(device)
        uncond = unconditional(pipe.denoiser, pipe.conditioner)(1).to(device) if st.guidance.active else None
        denoise = guided_denoiser(pipe.process, pipe.network(), cond, uncond, st.guidance)
        x = torch.randn(1, *pipe.autoencoder.latent_shape(pipe.length_for(st.duration)), device=device)
        alpha, sigma = (torch.full((1,), float(v), device=device) for v in pipe.process.schedule(st.steps)[0])
        denoise(x, alpha, sigma)  # a first call fills tables once
        _sync(device)
        started = time.perf_counter()
        denoise(x, alpha, sigma)
        _sync(device)
    out.measured_step_seconds, out.measured_at_batch = time.perf_counter() - started, 1
