"""The trainer: runs one stage of a recipe on one CPU, one GPU, or many processes.

Distribution goes through accelerate (``accelerate launch -m tta_core.cli RECIPE train`` or
``torchrun ... -m tta_core.cli RECIPE train``): the same code runs on every rank, only rank 0
writes checkpoints and logs. Everything random in a step is seeded from (seed, step,
micro-batch, rank) and the data order is a function of the step (see ``data.py``), so a
resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (clean_temporaries, latest_checkpoint, list_checkpoints, load_state, load_weights,
                          save_checkpoint)
from ..errors import CheckpointError, TtaError, UsageError
from ..interfaces import Conditioning
from ..recipe import Recipe, build, component_kind
from ..runs import RunDir, has_params, stages_training, weights_file
from ..yamlio import dump_yaml
from .data import EpochView, StreamBatchSampler
from .stage import StageConfig

log = logging.getLogger("tta.train")

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class TrainingStopped(TtaError):
    """Training stopped early (too many non-finite losses); the last good checkpoint stays."""

    exit_code = 1


@dataclass
class TrainResult:
    stage: str
    step: int
    checkpoint: Path | None
    signal: int | None = None  # the signal that stopped the run, if any
    nonfinite_skipped: int = 0
    metrics: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else 0


def _mix(*values: int) -> int:
    h = 0
    for v in values:
        h = (h * 6364136223846793005 + int(v) + 1442695040888963407) % (2**63)
    return h


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        registry: Any,
        stage: StageConfig,
        run_dir: str | os.PathLike,
        *,
        stage_order: list[str],
        device: str | None = None,
        precision: str | None = None,
        max_steps: int | None = None,
        seed: int | None = None,
        fresh: bool = False,
        init_from: str | None = None,
        allow_partial: bool = False,
        progress: bool = True,
        audio: Any = None,
    ):
        self.recipe, self.registry, self.stage = recipe, registry, stage
        self.run = RunDir(run_dir)
        self.stage_order = stage_order
        self.device_name = device
        self.precision = precision or stage.precision
        self.max_steps = stage.max_steps if max_steps is None else max_steps
        self.seed = stage.seed if seed is None else seed
        self.fresh, self.init_from, self.allow_partial = fresh, init_from or stage.init_from, allow_partial
        self.progress = progress
        if audio is None:
            from ..data.config import AudioConfig

            audio = AudioConfig.from_mapping(recipe.get("audio"))
        self.audio = audio
        self._stop_signal: int | None = None

    # -- set-up -----------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator

        cpu = self.device_name == "cpu" or (self.device_name in (None, "auto") and not torch.cuda.is_available())
        if self.device_name not in (None, "auto", "cpu", "cuda") and not str(self.device_name).startswith("cuda"):
            raise UsageError(f"--device takes cpu, cuda or auto, got {self.device_name!r}")
        from accelerate.state import AcceleratorState

        # one process runs stage after stage, each with its own precision: accelerate keeps
        # the first Accelerator's settings process-wide unless told to forget them (the
        # distributed set-up, PartialState, is kept)
        AcceleratorState._reset_state()
        from ..precision import resolve_precision

        requested = self.precision
        self.precision = resolve_precision(requested, "cpu" if cpu else "cuda")
        if requested == "auto":
            log.info("stage '%s': precision auto -> %s", self.stage.name, self.precision)
        return Accelerator(cpu=cpu, mixed_precision=_PRECISION[self.precision])

    def _earlier_stages(self) -> list[str]:
        order = self.stage_order
        return order[: order.index(self.stage.name)] if self.stage.name in order else order

    def _build_components(self) -> tuple[dict[str, Any], dict[str, str]]:
        components, kinds = {}, {}
        for name, node in self.recipe.components.items():
            kinds[name] = component_kind(self.recipe, name, self.registry)
            components[name] = build(node, kinds[name], self.registry, audio=self.audio)
        from ..sampling import resolve_roles

        roles = resolve_roles(self.recipe, self.registry, strict=False)
        return components, roles

    def _load_from_earlier(self, components: dict[str, Any]) -> None:
        earlier = self._earlier_stages()
        for name, module in components.items():
            if not has_params(module):
                continue
            found = self.run.find_weights(name, earlier, prefer_ema=name not in self.stage.trains)
            if found is not None:
                load_state(module, found.load(), str(found.path), strict=True)
                log.info("%s: weights from stage '%s' (%s)", name, found.stage, "EMA" if found.ema else "raw")
            elif self.run.given_weights(name) is not None:
                path = self.run.given_weights(name)
                load_state(module, load_weights(path), str(path), strict=True)
                log.info("%s: weights from %s", name, path)
            elif name in self.stage.frozen and "pretrained" not in self.recipe.components[name]:
                stages = [s for s in earlier if s in stages_training(self.recipe, name)]
                hint = (f"train it first: tta-run {self.recipe.path} train --stage {stages[-1]}"
                        if stages else "no earlier stage trains it; give it pretrained weights")
                raise UsageError(f"stage '{self.stage.name}' keeps '{name}' frozen, but no trained weights "
                                 f"for it were found in {self.run.root}: {hint}")

    def _adopt(self, components: dict[str, Any]) -> None:
        """With --init-from: the weights of the parts this stage does not train and this run has
        none of (a frozen VAE and text encoder, a vocoder) are copied from there into this
        run's ``weights/``, so the run trains, resumes and samples on its own."""
        everything = self.stage_order
        for name, module in components.items():
            if name in self.stage.trains or not has_params(module) or "pretrained" in self.recipe.components[name]:
                continue
            if self.run.find_weights(name, everything) is not None or self.run.given_weights(name) is not None:
                continue
            source = _init_source(Path(self.init_from), name)
            if source is None:
                continue
            ema = source.parent / weights_file(name, True)
            source = ema if source.name == weights_file(name) and ema.exists() else source
            target = self.run.root / "weights" / weights_file(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            log.info("%s: weights copied from %s into %s", name, source, target)

    def _init_from(self, components: dict[str, Any]) -> None:
        path = Path(self.init_from)
        for name in self.stage.trains:
            source = _init_source(path, name)
            if source is None:
                raise UsageError(f"--init-from {path}: no weights for '{name}' there "
                                 f"(looked for {weights_file(name)} in a checkpoint or run folder)")
            load_state(components[name], load_weights(source), str(source), strict=not self.allow_partial)

    # -- the run ----------------------------------------------------------------------------
    def run_stage(self) -> TrainResult:
        acc = self._accelerator()
        stage, is_main = self.stage, acc.is_main_process
        stage_dir = self.run.stage_dir(stage.name)
        ckpt_root = self.run.checkpoints(stage.name)
        if is_main:
            _check_writable(stage_dir)
            clean_temporaries(ckpt_root)
            if self.fresh and ckpt_root.exists():
                shutil.rmtree(ckpt_root)
            (stage_dir / "recipe.resolved.yaml").write_text(dump_yaml(self.recipe.data))
        acc.wait_for_everyone()

        torch.manual_seed(self.seed)  # the same initial weights on every rank and every run
        components, roles = self._build_components()
        unknown = [n for n in (*stage.trains, *stage.frozen) if n not in components]
        if unknown:
            raise UsageError(f"stage '{stage.name}' names unknown components: {', '.join(unknown)}")
        if self.init_from and is_main:
            self._adopt(components)
        acc.wait_for_everyone()
        self._load_from_earlier(components)
        resume = None if self.fresh else latest_checkpoint(ckpt_root)
        if resume is None and self.init_from:
            self._init_from(components)

        device = acc.device
        for name, module in components.items():
            if isinstance(module, torch.nn.Module):
                module.to(device)
                trains = name in stage.trains
                module.train(trains)
                module.requires_grad_(trains)

        objective = build(stage.objective, "objective", self.registry)
        extra = dict(objective.modules()) if hasattr(objective, "modules") else {}
        clash = sorted(set(extra) & set(components))
        if clash:
            raise UsageError(f"objective modules {clash} have the names of recipe components; rename one")
        for module in extra.values():
            module.to(device).train()
        trained = {n: components[n] for n in stage.trains if has_params(components[n])} | extra

        start = 0
        nonfinite_total = 0
        if resume is not None:
            self._restore_weights(resume, trained)

        # wrap for distributed training once the weights are in place; the objective sees
        # the wrapped modules (so gradients are synchronised), EMA and checkpoints the bare ones
        from .objective import StageContext

        # a stage may train on its own example length (an autoencoder, being convolutional,
        # learns as well from shorter crops, at a fraction of the cost)
        ctx = StageContext(recipe=self.recipe, stage=stage, components={**components, **extra}, roles=roles,
                           trains=stage.trains, audio=stage.audio_for(self.audio), device=device, run_dir=self.run.root,
                           registry=self.registry, world_size=acc.num_processes, rank=acc.process_index,
                           barrier=acc.wait_for_everyone, cache_audio=self.audio)
        wrapped = {}
        for name, module in trained.items():
            wrapped[name] = acc.prepare_model(module) if acc.num_processes > 1 else module
            ctx.unwrapped[name] = module
            ctx.components[name] = wrapped[name]
        objective.setup(ctx)

        groups = objective.parameter_groups(ctx)
        param_lists = {name: list(params) for name, params in groups.items()}
        optimizers = {name: _make_optimizer(stage.optimizer_for(name), params) for name, params in param_lists.items()}
        schedulers = {name: _make_scheduler(opt, stage, self.max_steps) for name, opt in optimizers.items()}

        emas = {}
        if stage.ema is not None:
            from ema_pytorch import EMA

            for name in stage.trains:
                if has_params(components[name]):
                    emas[name] = EMA(components[name], beta=stage.ema.beta, update_after_step=stage.ema.update_after_step,
                                     update_every=stage.ema.update_every, power=stage.ema.power,
                                     include_online_model=False).to(device)
        ctx.ema = {name: ema.ema_model for name, ema in emas.items()}
        if resume is not None:
            start, nonfinite_total = self._restore_state(resume, emas, optimizers, schedulers)
            if is_main:
                log.info("resuming stage '%s' from step %d (%s)", stage.name, start, resume.path)
        prepared_opts = {n: acc.prepare_optimizer(o) for n, o in optimizers.items()}

        dataset = objective.train_dataset(ctx)
        micro_start = start * stage.grad_accum
        sampler = StreamBatchSampler(len(dataset), stage.batch_size, seed=self.seed, start=micro_start,
                                     rank=acc.process_index, world=acc.num_processes)
        loader = torch.utils.data.DataLoader(
            EpochView(dataset), batch_sampler=sampler, num_workers=stage.num_workers,
            collate_fn=getattr(objective, "collate", None), persistent_workers=False,
        )
        batches = iter(loader)

        logger = _Logs(stage_dir / "logs", enabled=is_main)
        bar = None
        if self.progress and is_main and start < self.max_steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, initial=start, desc=f"train {stage.name}", unit="step", dynamic_ncols=True)

        last_ckpt = resume.path if resume else None
        nonfinite_run = 0
        step = start
        t0, samples = time.perf_counter(), 0
        previous = _install_signal_handlers(self)
        try:
            while step < self.max_steps:
                losses_sum: dict[str, torch.Tensor] = {}  # on the device: read back only to log
                skipped = False
                for micro in range(stage.grad_accum):
                    batch, empty = next(batches), 0
                    while batch is None:  # every file of this micro-batch was bad (logged by the data layer)
                        empty += 1
                        if empty > max(10, 2 * len(dataset) // max(1, stage.batch_size)):
                            raise TtaError(f"stage '{stage.name}': no usable training items (every file read was "
                                           "bad); run `tta-run RECIPE prepare` for the report")
                        batch = next(batches)
                    batch = _to_device(batch, device)
                    seed = _mix(self.seed, step, micro, acc.process_index)
                    torch.manual_seed(seed)
                    gen = torch.Generator(device=device).manual_seed(seed)
                    last = micro == stage.grad_accum - 1
                    sync = contextlib.ExitStack()
                    if not last and acc.num_processes > 1:
                        for module in wrapped.values():
                            sync.enter_context(acc.no_sync(module))
                    with sync:
                        with acc.autocast():
                            out = objective.losses(batch, step, gen)
                        opt_losses = {k: v for k, v in out.items() if not k.startswith("log/")}
                        bad = _any_rank(acc, not all(torch.isfinite(v.detach()).all() for v in opt_losses.values()))
                        if bad:
                            skipped = True
                            break
                        names = list(opt_losses)
                        for i, name in enumerate(names):
                            # with several optimizers, each loss reaches only its own
                            # parameters (a generator loss must not touch the discriminator)
                            kwargs = {"inputs": param_lists[name]} if len(optimizers) > 1 else {}
                            acc.backward(opt_losses[name] / stage.grad_accum,
                                         retain_graph=i < len(names) - 1, **kwargs)
                    for key, value in out.items():
                        losses_sum[key] = losses_sum.get(key, 0.0) + value.detach().float() / stage.grad_accum
                    samples += stage.batch_size
                if skipped:
                    for opt in prepared_opts.values():
                        opt.zero_grad(set_to_none=True)
                    nonfinite_total += 1
                    nonfinite_run += 1
                    if is_main:
                        log.warning("step %d: non-finite loss, step skipped (%d in a row)", step, nonfinite_run)
                    if nonfinite_run >= stage.max_nonfinite:
                        raise TrainingStopped(
                            f"stage '{stage.name}' stopped: {nonfinite_run} non-finite losses in a row at step {step}. "
                            f"The last good checkpoint is {last_ckpt or 'none (no checkpoint was written yet)'}. "
                            "Lower the learning rate, enable grad_clip, or use fp32/bf16 instead of fp16."
                        )
                    if micro < stage.grad_accum - 1:  # keep the data stream aligned with the step
                        for _ in range(stage.grad_accum - 1 - micro):
                            next(batches)
                    step += 1
                    if self._stop_requested(acc):
                        break
                    continue
                nonfinite_run = 0
                stepped = [n for n in optimizers if n in losses_sum]
                for name in stepped:
                    opt = prepared_opts[name]
                    if stage.grad_clip:
                        acc.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], stage.grad_clip)
                    opt.step()
                    schedulers[name].step()
                for opt in prepared_opts.values():
                    opt.zero_grad(set_to_none=True)
                for ema in emas.values():
                    ema.update()
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % stage.log_every == 0 or step == self.max_steps:
                    values = {k: float(v) for k, v in losses_sum.items()}
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if not k.startswith("log/")},
                                        refresh=False)
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    logger.write(step, {**values, "lr": schedulers[stepped[0]].get_last_lr()[0] if stepped else 0.0,
                                        "steps_per_s": (step - start) / elapsed, "samples_per_s": samples / elapsed,
                                        "nonfinite_skipped": nonfinite_total})
                stop = self._stop_requested(acc)
                if step % stage.checkpoint_every == 0 or step == self.max_steps or stop:
                    last_ckpt = self._save(acc, step, trained, emas, optimizers, schedulers, nonfinite_total, last_ckpt)
                if stage.validate_every and step % stage.validate_every == 0 and hasattr(objective, "validate") and is_main:
                    metrics = objective.validate(ctx, stage_dir / "samples" / f"step-{step:08d}")
                    if metrics:
                        logger.write(step, {f"valid/{k}": v for k, v in metrics.items()})
                if stop:
                    break
            if step >= self.max_steps and (last_ckpt is None or not str(last_ckpt).endswith(f"{step:08d}")):
                last_ckpt = self._save(acc, step, trained, emas, optimizers, schedulers, nonfinite_total, last_ckpt)
        except torch.OutOfMemoryError:
            raise TtaError(
                f"out of memory in stage '{stage.name}' with batch_size {stage.batch_size}: lower it, e.g. "
                f"--set train.{stage.name}.batch_size={max(1, stage.batch_size // 2)} "
                f"(and raise train.{stage.name}.grad_accum to keep the effective batch)"
            ) from None
        finally:
            _restore_signal_handlers(previous)
            if bar is not None:
                bar.close()
            logger.close()
        acc.wait_for_everyone()
        self.last_components = {n: ctx.unwrap(n) for n in ctx.components}
        return TrainResult(stage.name, step, last_ckpt, self._stop_signal, nonfinite_total, logger.last)

    # -- signals ----------------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        self._stop_signal = signum

    def _stop_requested(self, acc) -> bool:
        return _any_rank(acc, self._stop_signal is not None) if acc.num_processes > 1 else self._stop_signal is not None

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, acc, step, trained, emas, optimizers, schedulers, nonfinite, last_good) -> Path:
        path = None
        if acc.is_main_process:
            weights = {name: module.state_dict() for name, module in trained.items()}
            for name, ema in emas.items():
                weights[f"{name}.ema"] = ema.ema_model.state_dict()
            tensors = {
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                "ema_steps": {n: ema.step for n, ema in emas.items()},
                "rng": {"torch": torch.get_rng_state()},
            }
            state = {"stage": self.stage.name, "nonfinite_skipped": nonfinite, "seed": self.seed,
                     "micro_batches": step * self.stage.grad_accum, "batch_size": self.stage.batch_size,
                     "world_size": acc.num_processes}
            root = self.run.checkpoints(self.stage.name)
            try:
                path = save_checkpoint(root, step, weights=weights, state=state, tensors=tensors)
            except OSError as exc:
                raise CheckpointError(
                    f"could not write the checkpoint of step {step} to {root}: {exc.strerror or exc}. "
                    f"The last good checkpoint is untouched: {last_good or 'none yet'}"
                ) from exc
            _prune(root, self.stage.keep_last, self.stage.milestones)
        acc.wait_for_everyone()
        return path or self.run.checkpoints(self.stage.name) / f"step-{step:08d}"

    def _restore_weights(self, ckpt, trained) -> None:
        for name, module in trained.items():
            if not ckpt.has_weights(name):
                raise CheckpointError(f"checkpoint {ckpt.path} has no weights for '{name}'; start over with --fresh")
            load_state(module, ckpt.weights(name), str(ckpt.path), strict=True)

    def _restore_state(self, ckpt, emas, optimizers, schedulers) -> tuple[int, int]:
        for name, ema in emas.items():
            if ckpt.has_weights(f"{name}.ema"):
                load_state(ema.ema_model, ckpt.weights(f"{name}.ema"), str(ckpt.path), strict=True)
        tensors = ckpt.tensors()
        for name, opt in optimizers.items():
            if name in tensors.get("optimizers", {}):
                opt.load_state_dict(tensors["optimizers"][name])
        for name, sched in schedulers.items():
            if name in tensors.get("schedulers", {}):
                sched.load_state_dict(tensors["schedulers"][name])
        for name, ema in emas.items():
            if name in tensors.get("ema_steps", {}):
                ema.step.copy_(tensors["ema_steps"][name])
                ema.initted.fill_(True)
        if ckpt.state.get("batch_size") not in (None, self.stage.batch_size) or \
                ckpt.state.get("micro_batches", ckpt.step * self.stage.grad_accum) != ckpt.step * self.stage.grad_accum:
            log.warning("batch_size or grad_accum changed since %s: the data order will not continue exactly", ckpt.path)
        return ckpt.step, int(ckpt.state.get("nonfinite_skipped", 0))


# -- helpers ----------------------------------------------------------------------------------


def _init_source(path: Path, name: str) -> Path | None:
    """Weights of ``name`` under --init-from: a .safetensors file, a checkpoint folder, a
    stage folder, or a run folder (any stage's latest checkpoint)."""
    if path.is_file():
        return path
    for candidate in (path / weights_file(name), path / "weights" / weights_file(name)):
        if candidate.exists():
            return candidate
    ckpt = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if ckpt and ckpt.has_weights(name):
        return ckpt.path / weights_file(name)
    if path.is_dir():
        for stage_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            ckpt = latest_checkpoint(stage_dir / "checkpoints")
            if ckpt and ckpt.has_weights(name):
                return ckpt.path / weights_file(name)
    return None


def _make_optimizer(cfg, params):
    params = list(params)
    if cfg.type in ("adamw", "adam"):
        # the fused kernel (CPU and CUDA) updates every tensor in one pass: on a CPU the default
        # per-tensor loop costs as much as a fifth of a small model's training step
        fused = {"fused": True} if params and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                                  for p in params) else {}
        kind = torch.optim.AdamW if cfg.type == "adamw" else torch.optim.Adam
        return kind(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps, **fused)
    if cfg.type == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer type '{cfg.type}': adamw, adam or sgd")


def _make_scheduler(opt, stage: StageConfig, max_steps: int):
    cfg = stage.lr_schedule
    total = max(stage.max_steps, 1)

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.type == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.type == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _any_rank(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


def _to_device(batch: Any, device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    if isinstance(batch, Conditioning):
        return batch.to(device)
    return batch


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TtaError(f"the run directory {path} is not writable: {exc.strerror or exc}. "
                       "Choose another with --run-dir.") from None


def _prune(root: Path, keep_last: int, milestones: tuple[int, ...]) -> None:
    ckpts = list_checkpoints(root)
    keep = {c.path for c in ckpts[-max(keep_last, 1):]} | {c.path for c in ckpts if c.step in milestones}
    latest = latest_checkpoint(root)
    if latest is not None:
        keep.add(latest.path)
    for c in ckpts:
        if c.path not in keep:
            shutil.rmtree(c.path, ignore_errors=True)


class _Logs:
    """metrics.jsonl and TensorBoard, written by rank 0 only."""

    def __init__(self, root: Path, enabled: bool):
        self.enabled, self.last = enabled, {}
        self.tb = None
        if enabled:
            root.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(root / "metrics.jsonl", "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(root))
            except Exception as exc:  # tensorboard missing or broken: metrics.jsonl still works
                log.warning("TensorBoard logging off: %s", exc)

    def write(self, step: int, values: dict) -> None:
        self.last = {**self.last, **values}
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def _install_signal_handlers(trainer: Trainer):
    """SIGINT/SIGTERM: finish the step, write a checkpoint, exit 130/143. A second SIGINT
    interrupts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if trainer._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop(signum)
        log.warning("signal %d: stopping after this step and writing a checkpoint", signum)

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(previous) -> None:
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)
