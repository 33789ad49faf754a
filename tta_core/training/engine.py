"""The trainer: runs one stage of a recipe on one CPU, one GPU, or many processes.

Distribution goes through accelerate (``accelerate launch -m tta_core.cli RECIPE train`` or
``torchrun ... -m tta_core.cli RECIPE train``): the same code runs on every rank, only rank 0
writes checkpoints and logs. Everything random in a step is seeded from (seed, step,
micro-batch, rank) and the data order is a function of the step (see ``data.py``), so a
resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters import ADAPTER_SUFFIX, adapter_metadata, adapter_state, add_adapter, load_adapter_state
from ..checkpoint import (Checkpoint, CheckpointContents, CheckpointDamaged, atomic_write, checkpoint_dirs,
                          clean_temporaries, fsync_dir, latest_checkpoint, load_checkpoint, load_state, load_weights,
                          resume_candidates, save_checkpoint)
from ..errors import CheckpointError, TtaError, UsageError
from ..interfaces import Conditioning
from ..precision import ACCELERATE, resolve_precision
from ..recipe import Recipe, build, component_kind
from ..runs import RunDir, StageLock, has_params, stages_training, weights_file
from ..yamlio import dump_yaml
from .data import EpochView, StreamBatchSampler
from .stage import StageConfig

log = logging.getLogger("tta.train")


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
    wrote_checkpoint: bool = False  # whether this run wrote one (with --fresh: replaced the old ones)

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else 0


class _Interrupted(BaseException):
    """SIGINT/SIGTERM during start-up: unwinds it (nothing has changed in the run yet). A
    BaseException, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Job:
    """What a stage's training loop works with (built by Trainer._prepare)."""

    ctx: Any
    objective: Any
    trained: dict
    wrapped: dict
    param_lists: dict
    optimizers: dict
    prepared_opts: dict
    schedulers: dict
    emas: dict
    dataset: Any
    batches: Any
    start: int
    nonfinite_total: int
    resume: Checkpoint | None


def launched() -> bool:
    """Whether accelerate launch or torchrun started this process: accelerate then trains it on
    the device the launcher gives it (cuda:<LOCAL_RANK>, or the CPU with --device cpu)."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1


def check_device(device: str | None) -> torch.device | None:
    """The device ``--device`` asks training to use, as ``sample`` reads it (None: auto, CUDA
    when available); a UsageError (exit 2) for one it cannot use here, checked before anything
    is built: CUDA without CUDA, a GPU index this machine does not have, or an index under
    a multi-process launch, where the launcher chooses each process's GPU."""
    if device in (None, "auto"):
        return None
    if device == "cpu":
        return torch.device("cpu")
    if not str(device).startswith("cuda"):
        raise UsageError(f"--device takes cpu, cuda or auto, got {device!r}")
    from ..sampling.device import pick_device

    chosen = pick_device(device)
    if chosen.index is not None:
        if launched():
            raise UsageError(
                f"--device {device}: under accelerate launch / torchrun each process trains on the GPU the launcher "
                f"gives it (this one: cuda:{os.environ.get('LOCAL_RANK', 0)}), not on one --device names; give "
                "--device cuda or leave it out, and choose the GPUs with CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count()
        if chosen.index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return chosen


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
        run_dir: str | os.PathLike | None = None,  # default: the recipe's run directory
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
        memory_check: bool = True,
    ):
        check_device(device)
        self.recipe, self.registry, self.stage = recipe, registry, stage
        self.run = RunDir(recipe.run_dir if run_dir is None else run_dir)
        self.stage_order = stage_order
        self.device_name = device
        self.precision = precision or stage.precision
        self.max_steps = stage.max_steps if max_steps is None else max_steps
        self.seed = stage.seed if seed is None else seed
        self.fresh, self.init_from, self.allow_partial = fresh, init_from or stage.init_from, allow_partial
        self.progress = progress
        self.memory_check = memory_check
        self.audio = recipe.audio if audio is None else audio
        self._stop_signal: int | None = None

    # -- set-up -----------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator

        device = check_device(self.device_name)
        cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
        if device is not None and device.index is not None:
            # one process: accelerate trains on the current CUDA device, so --device cuda:N makes it that one
            torch.cuda.set_device(device)
        from accelerate.state import AcceleratorState

        # one process runs stage after stage, each with its own precision: accelerate keeps
        # the first Accelerator's settings process-wide unless told to forget them (the
        # distributed set-up, PartialState, is kept)
        AcceleratorState._reset_state()
        requested = self.precision
        self.precision = resolve_precision(requested, "cpu" if cpu else device or "cuda")
        if requested == "auto":
            log.info("stage '%s': precision auto -> %s", self.stage.name, self.precision)
        return Accelerator(cpu=cpu, mixed_precision=ACCELERATE[self.precision])

    def _earlier_stages(self) -> list[str]:
        order = self.stage_order
        return order[: order.index(self.stage.name)] if self.stage.name in order else order

    def _build_components(self) -> tuple[dict[str, Any], dict[str, str]]:
        components, kinds = {}, {}
        for name, node in self.recipe.components.items():
            kinds[name] = component_kind(self.recipe, name, self.registry)
            components[name] = build(node, kinds[name], self.registry, where=f"components.{name}", audio=self.audio)
        from ..roles import resolve_roles

        roles = resolve_roles(self.recipe, self.registry, strict=False)
        return components, roles

    def _load_from_earlier(self, components: dict[str, Any]) -> None:
        earlier = self._earlier_stages()
        for name, module in components.items():
            if not has_params(module):
                continue
            base = name not in self.stage.trains or name in self.stage.adapted  # an adapter's base: the EMA
            found = self.run.find_weights(name, earlier, prefer_ema=base)
            if found is not None:
                load_state(module, found.load(), str(found.path), strict=True)
                log.info("%s: weights from stage '%s' (%s)", name, found.stage, "EMA" if found.ema else "raw")
                self._earlier_adapters(module, name, found.stage, earlier)
            elif self.run.given_weights(name) is not None:
                path = self.run.given_weights(name)
                load_state(module, load_weights(path), str(path), strict=True)
                log.info("%s: weights from %s", name, path)
                self._earlier_adapters(module, name, None, earlier)
            elif (name in self.stage.frozen or (name in self.stage.adapted and not self.init_from)) \
                    and "pretrained" not in self.recipe.components[name]:
                stages = [s for s in earlier if s in stages_training(self.recipe, name)]
                hint = (f"train it first: tta-run {self.recipe.path} train --stage {stages[-1]}"
                        if stages else "no earlier stage trains it; give it pretrained weights")
                how = "trains adapters on" if name in self.stage.adapted else "keeps"
                raise UsageError(f"stage '{self.stage.name}' {how} '{name}'" + (" frozen" if how == "keeps" else "")
                                 + ", but no trained weights "
                                 f"for it were found in {self.run.root}: {hint}")

    def _earlier_adapters(self, module: Any, name: str, base_stage: str | None, earlier: list[str]) -> None:
        """The adapters earlier stages trained on ``module`` over these base weights, as
        sampling applies them (frozen here)."""
        from ..sampling.weights import apply_run_adapters

        for path in apply_run_adapters(module, name, self.recipe, self.run, None, base_stage, True, within=earlier):
            log.info("%s: adapter from %s", name, path)

    def _adopt(self, components: dict[str, Any]) -> None:
        """With --init-from: the weights of the parts this stage does not train and this run has
        none of (a frozen VAE and text encoder, a vocoder) are copied from there into this
        run's ``weights/``, so the run trains, resumes and samples on its own."""
        everything = self.stage_order
        for name, module in components.items():
            if (name in self.stage.trains and name not in self.stage.adapted) or not has_params(module) \
                    or "pretrained" in self.recipe.components[name]:
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
            partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            try:  # copied under another name and renamed: a stopped copy never looks like weights
                _link_or_copy(source, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
            log.info("%s: weights from %s linked (or copied) into %s", name, source, target)

    def _init_sources(self) -> dict[str, Path]:
        """Where --init-from has the weights of each trained component (checked before the
        run changes anything)."""
        path = Path(self.init_from)
        if not path.exists():
            raise UsageError(f"--init-from {path}: no such file or folder")
        sources = {}
        for name in self.stage.trains:
            source = _init_source(path, name)
            if source is None:
                raise UsageError(f"--init-from {path}: no weights for '{name}' there "
                                 f"(looked for {weights_file(name)} in a checkpoint or run folder)")
            sources[name] = source
        return sources

    # -- the run ----------------------------------------------------------------------------
    def run_stage(self) -> TrainResult:
        """Train the stage, resuming from its latest checkpoint unless ``fresh``.

        Nothing in the run directory changes until every check has passed: the stage is locked,
        the components are built, weights found, the data set built and its first batch read.
        With ``fresh`` the new run writes its checkpoints beside the old ones
        (``checkpoints.new-<time>``) and they replace the old ones only when the first is
        complete, so a run that fails or is stopped before that leaves the stage as it was.
        SIGINT/SIGTERM before the training loop stop the start-up at once (exit 130/143);
        during the loop they finish the step and write a checkpoint.
        """
        self._graceful, self._wrote = False, False
        self._ckpt_root = self.run.checkpoints(self.stage.name)
        self._damaged: list[Path] = []
        previous = _install_signal_handlers(self)
        lock, is_main = None, False
        try:
            acc = self._accelerator()
            is_main = acc.is_main_process
            if is_main:  # one lock per stage folder, held by the process that writes it
                lock = StageLock(self.run.stage_dir(self.stage.name))
            self._on_main(acc, lambda: self._preflight(lock))
            job = self._prepare(acc)
            self._graceful = True  # from here a signal ends the run with a checkpoint
            self._on_main(acc, self._commit)
            return self._train(acc, job)
        except _Interrupted as exc:
            return TrainResult(self.stage.name, 0, None, exc.signum)
        finally:
            self._graceful = True  # a signal during the clean-up only asks to stop
            if is_main:
                self._keep_old_checkpoints()
            if lock is not None:
                lock.release()
            _restore_signal_handlers(previous)

    def _on_main(self, acc, fn) -> None:
        """``fn()`` on the main process; when it fails every process raises (none waits forever)."""
        error = None
        if acc.is_main_process:
            try:
                fn()
            except Exception as exc:
                error = exc
        if _any_rank(acc, error is not None):
            raise error if error is not None else TtaError(
                f"stage '{self.stage.name}': the main process could not go on (its message says why)")

    def _preflight(self, lock: StageLock) -> None:
        stage_dir = self.run.stage_dir(self.stage.name)
        _check_writable(stage_dir)
        lock.acquire()
        _finish_cut_swap(stage_dir)

    def _prepare(self, acc) -> _Job:
        """Build and load everything the loop needs; reads the run directory, writes nothing
        in it (but for frozen weights --init-from adds under ``weights/``)."""
        stage = self.stage
        torch.manual_seed(self.seed)  # the same initial weights on every rank and every run
        components, roles = self._build_components()
        unknown = [n for n in (*stage.trains, *stage.frozen) if n not in components]
        if unknown:
            raise UsageError(f"stage '{stage.name}' names unknown components: {', '.join(unknown)}")
        resume, contents = (None, None) if self.fresh else self._resume_point()
        init = self._init_sources() if resume is None and self.init_from else {}
        if self.init_from and acc.is_main_process:
            self._adopt(components)
        acc.wait_for_everyone()
        self._load_from_earlier(components)
        for name, source in init.items():
            if name in stage.adapted:  # its base is what sampling loads too: linked into weights/ above
                continue
            load_state(components[name], load_weights(source), str(source), strict=not self.allow_partial)

        device = acc.device
        for name, module in components.items():
            if isinstance(module, torch.nn.Module):
                module.to(device)
                trains = name in stage.trains
                module.train(trains)
                module.requires_grad_(trains)

        for name in stage.adapted:
            if not has_params(components[name]):
                raise UsageError(f"train.{stage.name}.adapters: '{name}' has no weights to put an adapter on")
            add_adapter(components[name], stage.adapters)

        objective = build(stage.objective, "objective", self.registry)
        extra = dict(objective.modules()) if hasattr(objective, "modules") else {}
        clash = sorted(set(extra) & set(components))
        if clash:
            raise UsageError(f"objective modules {clash} have the names of recipe components; rename one")
        for module in extra.values():
            module.to(device).train()
        trained = {n: components[n] for n in stage.trains if has_params(components[n])} | extra
        if resume is not None:
            self._restore_weights(resume, contents, trained)
        return self._prepare_training(acc, components, roles, extra, objective, trained, resume, contents)

    def _prepare_training(self, acc, components, roles, extra, objective, trained, resume, contents) -> _Job:
        stage, device = self.stage, acc.device
        # wrap for distributed training once the weights are in place; the objective sees
        # the wrapped modules (so gradients are synchronised), EMA and checkpoints the bare ones
        from .objective import StageContext

        # a stage may train on its own example length (an autoencoder, being convolutional,
        # learns as well from shorter crops, at a fraction of the cost)
        ctx = StageContext(recipe=self.recipe, stage=stage, components={**components, **extra}, roles=roles,
                           trains=stage.trains, audio=stage.audio_for(self.audio), device=device, run_dir=self.run.root,
                           registry=self.registry, world_size=acc.num_processes, rank=acc.process_index,
                           barrier=acc.wait_for_everyone, cache_audio=self.audio,
                           progress=self.progress and acc.is_main_process)
        wrapped = {}
        for name, module in trained.items():
            wrapped[name] = acc.prepare_model(module) if acc.num_processes > 1 else module
            ctx.unwrapped[name] = module
            ctx.components[name] = wrapped[name]
        objective.setup(ctx)

        groups = objective.parameter_groups(ctx)
        param_lists = {name: list(params) for name, params in groups.items()}
        optimizers = {name: make_optimizer(stage.optimizer_for(name), params) for name, params in param_lists.items()}
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
        start = nonfinite_total = 0
        if resume is not None:
            start, nonfinite_total = self._restore_state(resume, contents, emas, optimizers, schedulers)
            if acc.is_main_process:
                log.info("resuming stage '%s' from step %d (%s)", stage.name, start, resume.path)
        prepared_opts = {n: acc.prepare_optimizer(o) for n, o in optimizers.items()}

        dataset = objective.train_dataset(ctx)
        micro_start = start * stage.grad_accum
        if getattr(dataset, "streaming", False):  # shards read as a stream (tta_core.data.stream)
            from ..data.dataset import collate

            batches = dataset.batches(acc.process_index, acc.num_processes, micro_start,
                                      getattr(objective, "collate", None) or collate, workers=stage.num_workers)
        else:
            sampler = StreamBatchSampler(len(dataset), stage.batch_size, seed=self.seed, start=micro_start,
                                         rank=acc.process_index, world=acc.num_processes)
            loader = torch.utils.data.DataLoader(
                EpochView(dataset), batch_sampler=sampler, num_workers=stage.num_workers,
                collate_fn=getattr(objective, "collate", None), persistent_workers=False,
                worker_init_fn=_leave_signals_to_the_trainer if stage.num_workers else None,
            )
            batches = iter(loader)
        job = _Job(ctx, objective, trained, wrapped, param_lists, optimizers, prepared_opts, schedulers, emas,
                   dataset, batches, start, nonfinite_total, resume)
        if start < self.max_steps:  # a data set that cannot be read fails here, before the run changes anything
            first = next(batches)
            job.batches = itertools.chain([first], batches)
            if self.memory_check:
                self._check_memory(acc, job, first)
        return job

    def _check_memory(self, acc, job: _Job, batch: Any) -> None:
        """Refuse a batch size whose training step is estimated to need more memory than the
        device has free, before the first step.

        One step of the stage's objective on the first item of the first batch and on the whole
        batch is counted on fake tensors (tta_core.memory.step_peaks: no memory, seconds); a
        step that needs its data runs for real on the first one and four items instead and is
        extrapolated linearly to ``batch_size`` (activations grow with the batch, gradients
        do not). Added: the optimizer's state (:func:`optimizer_state_bytes`), then a margin
        for what allocators add (sampling.MEMORY_MARGIN). Every buffer, attribute and
        gradient the trial steps touch is put back, so training goes on exactly as without
        them. Runs of several processes are not checked here (a CUDA out-of-memory error
        there still says which batch size to lower)."""
        from ..memory import available_bytes, format_bytes, peak_at, step_peaks
        from ..sampling.estimate import MEMORY_MARGIN

        stage, device = self.stage, acc.device
        have = available_bytes(device)
        if batch is None or have is None or acc.num_processes > 1:
            return
        size = stage.batch_size

        def step(items: Any) -> None:
            with acc.autocast():
                out = job.objective.losses(to_device(items, device), job.start, torch.Generator(device=device))
            sum(v.float().sum() for k, v in out.items() if not k.startswith("log/")).backward()

        parts = [job.objective, *job.ctx.components.values()]
        buffers = [b for m in parts if isinstance(m, torch.nn.Module) for b in m.buffers()]
        buffers += [b for m in getattr(job.objective, "modules", dict)().values() for b in m.buffers()]
        saved = [b.detach().clone() for b in buffers]
        try:
            peaks, _ = step_peaks(step, lambda n: _first(batch, n), tuple(sorted({1, size})),
                                  tuple(sorted({1, min(size, 4)})), tuple(parts),
                                  [device] if device.type == "cuda" else [])
        except Exception as exc:  # the check is optional: the real step reports real errors
            log.debug("no memory estimate for stage '%s': %s: %s", stage.name, type(exc).__name__, exc)
            return
        finally:
            with torch.no_grad():
                for b, value in zip(buffers, saved):
                    b.copy_(value)
        peak = peak_at(peaks, size)
        state = sum(optimizer_state_bytes(stage.optimizer_for(name), [p.shape for p in params])
                    for name, params in job.param_lists.items())
        need = int((peak + state) * MEMORY_MARGIN)
        if need > have:
            raise UsageError(
                f"stage '{stage.name}': a training step with batch_size {stage.batch_size} needs about "
                f"{format_bytes(need)} (estimated), and {device.type} memory has {format_bytes(have)} free: lower it, "
                f"e.g. --set train.{stage.name}.batch_size={max(1, stage.batch_size // 2)} (and raise "
                f"train.{stage.name}.grad_accum to keep the effective batch), or train anyway with --skip-memory-check")

    def _commit(self) -> None:
        """Every check has passed: tidy what interrupted runs left, set damaged checkpoints
        aside, choose where checkpoints go."""
        stage_dir = self.run.stage_dir(self.stage.name)
        final = self.run.checkpoints(self.stage.name)
        _tidy_stage_dir(stage_dir)
        for path in self._damaged:
            aside = _free_name(path.with_name(path.name + ".damaged"))
            os.replace(path, aside)
            log.warning("moved the damaged checkpoint %s to %s (it is never read again; delete it when you like)",
                        path, aside)
        if self.fresh and checkpoint_dirs(final):
            self._ckpt_root = _free_name(stage_dir / f"checkpoints.new-{time.strftime('%Y%m%d-%H%M%S')}")
            log.info("--fresh: the new run writes into %s; its first checkpoint replaces those in %s "
                     "(until then they stay as they are)", self._ckpt_root, final)

    def _train(self, acc, job: _Job) -> TrainResult:
        stage, is_main = self.stage, acc.is_main_process
        stage_dir = self.run.stage_dir(stage.name)
        logger = _Logs(stage_dir / "logs", enabled=is_main)
        bar = None
        if self.progress and is_main and job.start < self.max_steps:
            from ..progress import Progress  # a bar on a terminal, a plain line every few seconds in a log

            bar = Progress(self.max_steps, f"train {stage.name}", "steps", initial=job.start)

        last_ckpt = job.resume.path if job.resume else None
        nonfinite_total, nonfinite_run = job.nonfinite_total, 0
        step = job.start
        t0, samples = time.perf_counter(), 0
        try:
            while step < self.max_steps:
                if step == job.start and self._stop_requested(acc):
                    break  # stopped before the first step: there is nothing new to save
                losses_sum, skipped_at = self._accumulate(acc, job, step)
                samples += (stage.grad_accum if skipped_at is None else skipped_at) * stage.batch_size
                if skipped_at is not None:
                    for opt in job.prepared_opts.values():
                        opt.zero_grad(set_to_none=True)
                    nonfinite_total += 1
                    nonfinite_run += 1
                    if is_main:
                        log.warning("step %d: non-finite loss, step skipped (%d in a row)", step, nonfinite_run)
                    if nonfinite_run >= stage.max_nonfinite:
                        raise TrainingStopped(
                            f"stage '{stage.name}' stopped: {nonfinite_run} non-finite losses in a row at step {step}. "
                            f"The last good checkpoint is {last_ckpt or self._no_checkpoint_yet()}. "
                            "Lower the learning rate, enable grad_clip, or use fp32/bf16 instead of fp16."
                        )
                    for _ in range(stage.grad_accum - 1 - skipped_at):  # keep the data stream aligned with the step
                        next(job.batches)
                    step += 1
                    if self._stop_requested(acc):
                        break
                    continue
                nonfinite_run = 0
                stepped = self._apply(acc, job, losses_sum)
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % stage.log_every == 0 or step == self.max_steps:
                    values = {k: float(v) for k, v in losses_sum.items()}
                    if bar is not None:
                        bar.set_postfix(", ".join(f"{k} {v:.4g}" for k, v in values.items() if not k.startswith("log/")))
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    lr = job.schedulers[stepped[0]].get_last_lr()[0] if stepped else 0.0
                    logger.write(step, {**values, "lr": lr, "steps_per_s": (step - job.start) / elapsed,
                                        "samples_per_s": samples / elapsed, "nonfinite_skipped": nonfinite_total})
                stop = self._stop_requested(acc)
                if step % stage.checkpoint_every == 0 or step == self.max_steps or stop:
                    last_ckpt = self._save(acc, step, job, nonfinite_total, last_ckpt)
                if stage.validate_every and step % stage.validate_every == 0 and hasattr(job.objective, "validate") \
                        and is_main:
                    metrics = job.objective.validate(job.ctx, stage_dir / "samples" / f"step-{step:08d}")
                    if metrics:
                        logger.write(step, {f"valid/{k}": v for k, v in metrics.items()})
                if stop:
                    break
            if step >= self.max_steps and (last_ckpt is None or not str(last_ckpt).endswith(f"{step:08d}")):
                last_ckpt = self._save(acc, step, job, nonfinite_total, last_ckpt)
        except torch.OutOfMemoryError:
            raise TtaError(
                f"out of memory in stage '{stage.name}' with batch_size {stage.batch_size}: lower it, e.g. "
                f"--set train.{stage.name}.batch_size={max(1, stage.batch_size // 2)} "
                f"(and raise train.{stage.name}.grad_accum to keep the effective batch)"
            ) from None
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        bad = getattr(job.dataset, "bad_count", 0)
        if bad and is_main:
            log.warning("stage '%s': %d unusable training file(s) skipped, each logged once above "
                        "(`tta-run %s prepare` reports them all)", stage.name, bad, self.recipe.path)
        acc.wait_for_everyone()
        self.last_components = {n: job.ctx.unwrap(n) for n in job.ctx.components}
        return TrainResult(stage.name, step, last_ckpt, self._stop_signal, nonfinite_total, logger.last, self._wrote)

    def _accumulate(self, acc, job: _Job, step: int) -> tuple[dict, int | None]:
        """Forward and backward over the step's micro-batches: the summed losses (on the
        device) and, when a loss was not finite, the index of that micro-batch."""
        stage, device = self.stage, acc.device
        losses_sum: dict[str, torch.Tensor] = {}  # on the device: read back only to log
        for micro in range(stage.grad_accum):
            batch, empty = next(job.batches), 0
            while batch is None:  # every file of this micro-batch was bad (logged by the data layer)
                empty += 1
                if empty > max(10, 2 * len(job.dataset) // max(1, stage.batch_size)):
                    raise TtaError(f"stage '{stage.name}': no usable training items (every file read was "
                                   "bad); run `tta-run RECIPE prepare` for the report")
                batch = next(job.batches)
            batch = to_device(batch, device)
            seed = _mix(self.seed, step, micro, acc.process_index)
            torch.manual_seed(seed)
            gen = torch.Generator(device=device).manual_seed(seed)
            last = micro == stage.grad_accum - 1
            sync = contextlib.ExitStack()
            if not last and acc.num_processes > 1:
                for module in job.wrapped.values():
                    sync.enter_context(acc.no_sync(module))
            with sync:
                with acc.autocast():
                    out = job.objective.losses(batch, step, gen)
                opt_losses = {k: v for k, v in out.items() if not k.startswith("log/")}
                if _any_rank(acc, not all(torch.isfinite(v.detach()).all() for v in opt_losses.values())):
                    return losses_sum, micro
                names = list(opt_losses)
                for i, name in enumerate(names):
                    # with several optimizers, each loss reaches only its own
                    # parameters (a generator loss must not touch the discriminator)
                    kwargs = {"inputs": job.param_lists[name]} if len(job.optimizers) > 1 else {}
                    acc.backward(opt_losses[name] / stage.grad_accum, retain_graph=i < len(names) - 1, **kwargs)
            for key, value in out.items():
                losses_sum[key] = losses_sum.get(key, 0.0) + value.detach().float() / stage.grad_accum
        return losses_sum, None

    def _apply(self, acc, job: _Job, losses_sum: dict) -> list[str]:
        """One optimizer step of every optimizer that got a loss, then EMA; their names."""
        stepped = [n for n in job.optimizers if n in losses_sum]
        for name in stepped:
            opt = job.prepared_opts[name]
            if self.stage.grad_clip:
                acc.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.stage.grad_clip)
            opt.step()
            job.schedulers[name].step()
        for opt in job.prepared_opts.values():
            opt.zero_grad(set_to_none=True)
        for ema in job.emas.values():
            ema.update()
        return stepped

    # -- signals ----------------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        self._stop_signal = signum

    def _stop_requested(self, acc) -> bool:
        return _any_rank(acc, self._stop_signal is not None) if acc.num_processes > 1 else self._stop_signal is not None

    # -- checkpoints ------------------------------------------------------------------------
    def _resume_point(self) -> tuple[Checkpoint | None, CheckpointContents | None]:
        """The checkpoint to resume from, read whole. A damaged one is skipped for the one
        before it, with a warning; it is set aside (never deleted) once the run starts."""
        damaged: list[tuple[Path, CheckpointDamaged]] = []
        for path in resume_candidates(self.run.checkpoints(self.stage.name)):
            try:
                ckpt = load_checkpoint(path)
                contents = ckpt.read()
            except CheckpointDamaged as exc:
                damaged.append((path, exc))
                continue
            for bad, exc in damaged:
                log.warning("%s\nresuming from the checkpoint before it instead: %s", exc, ckpt.path)
            self._damaged = [bad for bad, _ in damaged]
            return ckpt, contents
        if damaged:
            raise CheckpointDamaged(f"{damaged[0][1]} There is no earlier readable checkpoint of stage "
                                    f"'{self.stage.name}' to resume from.")
        return None, None

    def _no_checkpoint_yet(self) -> str:
        final = self.run.checkpoints(self.stage.name)
        if self._ckpt_root != final:
            return f"none of the new run yet (the previous checkpoints in {final} are kept)"
        return "none (no checkpoint was written yet)"

    def _save(self, acc, step, job: _Job, nonfinite, last_good) -> Path:
        final = self.run.checkpoints(self.stage.name)
        path = None
        if acc.is_main_process:
            weights, metadata = {}, {}
            for name, module in job.trained.items():
                weights[_weight_set(name, self.stage)] = _trained_state(module, name, self.stage)
            for name, ema in job.emas.items():
                weights[_weight_set(name, self.stage, ema=True)] = _trained_state(ema.ema_model, name, self.stage)
            for name in self.stage.adapted:
                kind = component_kind(self.recipe, name, self.registry)
                for ema in (False, True):
                    metadata[_weight_set(name, self.stage, ema)] = adapter_metadata(job.trained[name], component=name,
                                                                                    kind=kind)
            tensors = {
                "optimizers": {n: o.state_dict() for n, o in job.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in job.schedulers.items()},
                "ema_steps": {n: ema.step for n, ema in job.emas.items()},
                "rng": {"torch": torch.get_rng_state()},
            }
            state = {"stage": self.stage.name, "nonfinite_skipped": nonfinite, "seed": self.seed,
                     "micro_batches": step * self.stage.grad_accum, "batch_size": self.stage.batch_size,
                     "world_size": acc.num_processes}
            root = self._ckpt_root
            try:
                path = save_checkpoint(root, step, weights=weights, state=state, tensors=tensors,
                                       file_metadata=metadata)
            except OSError as exc:
                raise CheckpointError(
                    f"could not write the checkpoint of step {step} to {root}: {exc.strerror or exc}. "
                    f"The last good checkpoint is untouched: {last_good or self._no_checkpoint_yet()}"
                ) from exc
            if root != final:
                path = self._replace_old_checkpoints(path)
            _prune(final, self.stage.keep_last, self.stage.milestones, path)
            if not self._wrote:  # the recipe of the checkpoints: recorded with the first of this run
                atomic_write(self.run.stage_dir(self.stage.name) / "recipe.resolved.yaml", dump_yaml(self.recipe.data))
        self._wrote = True
        acc.wait_for_everyone()
        return path or final / f"step-{step:08d}"

    def _replace_old_checkpoints(self, first: Path) -> Path:
        """--fresh: the new run's first checkpoint is complete; it takes the place of the old
        checkpoints, which are set aside and then deleted."""
        final, new = self.run.checkpoints(self.stage.name), self._ckpt_root
        aside = _free_name(final.with_name(f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        try:
            os.replace(final, aside)
            try:
                os.replace(new, final)
            except OSError:
                os.replace(aside, final)
                raise
        except OSError as exc:
            raise CheckpointError(f"--fresh: could not move the new checkpoints {new} into {final}: "
                                  f"{exc.strerror or exc}. The previous checkpoints are kept in {final}.") from exc
        self._ckpt_root = final
        fsync_dir(final.parent)
        shutil.rmtree(aside, ignore_errors=True)
        log.info("--fresh: the new run's first checkpoint replaced the previous ones of stage '%s'", self.stage.name)
        return final / first.name

    def _keep_old_checkpoints(self) -> None:
        """--fresh, and the run ends before its first checkpoint: the old ones stay in use."""
        final, new = self.run.checkpoints(self.stage.name), self._ckpt_root
        if new == final:
            return
        if new.exists() and checkpoint_dirs(new):
            log.warning("--fresh: the new checkpoints in %s did not replace those in %s; delete the folder, or "
                        "swap it in by hand to continue that run", new, final)
            return
        shutil.rmtree(new, ignore_errors=True)  # at most a partial write: nothing complete
        log.warning("--fresh: the new run stopped before its first checkpoint; the previous checkpoints of "
                    "stage '%s' in %s are kept", self.stage.name, final)

    def _restore_weights(self, ckpt: Checkpoint, contents: CheckpointContents, trained) -> None:
        for name, module in trained.items():
            key = _weight_set(name, self.stage)
            if key not in contents.weights:
                what = "an adapter" if name in self.stage.adapted else "weights"
                raise CheckpointError(f"checkpoint {ckpt.path} has no {what} for '{name}' ({key}.safetensors): "
                                      "did the stage's adapters: change? Start over with --fresh")
            _load_trained(module, contents.weights[key], name, self.stage, str(ckpt.path))

    def _restore_state(self, ckpt: Checkpoint, contents: CheckpointContents, emas, optimizers,
                       schedulers) -> tuple[int, int]:
        for name, ema in emas.items():
            key = _weight_set(name, self.stage, ema=True)
            if key in contents.weights:
                _load_trained(ema.ema_model, contents.weights[key], name, self.stage, str(ckpt.path))
        tensors = contents.tensors
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


def _weight_set(name: str, stage: StageConfig, ema: bool = False) -> str:
    """The checkpoint's weight-set name for a trained component: ``unet``, ``unet.ema``, or
    with adapters ``unet.adapter`` and ``unet.adapter.ema``."""
    base = f"{name}.{ADAPTER_SUFFIX}" if name in stage.adapted else name
    return f"{base}.ema" if ema else base


def _trained_state(module, name: str, stage: StageConfig) -> dict:
    return adapter_state(module) if name in stage.adapted else module.state_dict()


def _load_trained(module, state: dict, name: str, stage: StageConfig, source: str) -> None:
    if name in stage.adapted:
        try:
            load_adapter_state(module, state)
        except UsageError as exc:
            raise CheckpointError(f"{source}: {exc}; did the stage's adapters: change? Start over with --fresh") \
                from None
    else:
        load_state(module, state, source, strict=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (weights files are replaced, never written
    in place, so the two names never diverge), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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


def optimizer_state_bytes(cfg, shapes) -> int:
    """Bytes of the state ``make_optimizer(cfg, ...)`` keeps for parameters of ``shapes``
    (fp32 states): Adam/AdamW two moments per parameter, SGD one with momentum (none without),
    Adafactor a row and a column statistic per matrix (over its last two dimensions) and a
    full one per vector."""
    import math

    shapes = [tuple(s) for s in shapes]
    total = sum(math.prod(s) for s in shapes)
    if cfg.type == "sgd":
        return 4 * total if cfg.momentum else 0
    if cfg.type == "adafactor":
        return 4 * sum(math.prod(s[:-1]) + math.prod(s[:-2]) * s[-1] if len(s) > 1 else math.prod(s) for s in shapes)
    return 8 * total


def make_optimizer(cfg, params):
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
    if cfg.type == "adafactor":
        from transformers.optimization import Adafactor

        # the recipe's rate, as the lr schedule scales it: Adafactor's own relative step size
        # and parameter-scaled rate would ignore both
        return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False, beta1=None)
    raise UsageError(f"unknown optimizer type '{cfg.type}': adamw, adam, sgd or adafactor")


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


def _first(batch: Any, n: int) -> Any:
    """The first ``n`` items of a collated batch (tensors, lists and the mappings holding them)."""
    if isinstance(batch, (torch.Tensor, list, tuple)):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: _first(v, n) for k, v in batch.items()}
    if isinstance(batch, Conditioning):
        return Conditioning(*(None if t is None else t[:n] for t in (batch.tokens, batch.mask, batch.pooled)))
    return batch


def to_device(batch: Any, device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
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


def _prune(root: Path, keep_last: int, milestones: tuple[int, ...], newest: Path) -> None:
    """Delete checkpoints beyond the last ``keep_last`` (and the milestones); ``newest``, the
    one just written, always stays."""
    ckpts = checkpoint_dirs(root)
    keep = {p for _, p in ckpts[-max(keep_last, 1):]} | {p for s, p in ckpts if s in milestones} | {newest}
    for _, path in ckpts:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


_NEW = re.compile(r"^checkpoints\.new-\d{8}-\d{6}(-\d+)?$")
_OLD = re.compile(r"^checkpoints\.old-\d{8}-\d{6}(-\d+)?$")


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... when it is taken."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _finish_cut_swap(stage_dir: Path) -> None:
    """A --fresh run killed between the two renames that put its first checkpoint in place
    leaves no ``checkpoints/`` but the old ones set aside: they are put back."""
    final = stage_dir / "checkpoints"
    if final.exists() or not stage_dir.is_dir():
        return
    old = sorted(p for p in stage_dir.iterdir() if _OLD.match(p.name) and checkpoint_dirs(p))
    if old:
        os.replace(old[-1], final)
        log.warning("put back %s as %s: a --fresh run was stopped before its first checkpoint took their place",
                    old[-1], final)


def _tidy_stage_dir(stage_dir: Path) -> None:
    """Remove what interrupted runs left: partial checkpoint writes, the folder of a --fresh run
    that wrote no complete checkpoint, and old checkpoints a --fresh run had already replaced."""
    final = stage_dir / "checkpoints"
    clean_temporaries(final)
    for path in sorted(stage_dir.iterdir()):
        if _NEW.match(path.name) and path.is_dir():
            if checkpoint_dirs(path):
                log.warning("%s holds checkpoints of a --fresh run that did not replace those in %s; it is not "
                            "used: delete it, or swap it in by hand to continue that run", path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)
        elif _OLD.match(path.name) and path.is_dir() and checkpoint_dirs(final):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s: checkpoints that a --fresh run had replaced", path)


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
    """SIGINT/SIGTERM: during start-up stop at once (nothing has changed yet); in the loop
    finish the step, write a checkpoint, exit 130/143. A second SIGINT interrupts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if not trainer._graceful:
            raise _Interrupted(signum)
        if trainer._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop(signum)
        log.warning("signal %d: stopping after this step and writing a checkpoint", signum)

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """In a data-loading worker: SIGINT/SIGTERM sent to the whole process group (Ctrl-C, a
    cluster's scheduler) are for the trainer, which finishes its step with the workers still
    there and then ends them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _restore_signal_handlers(previous) -> None:
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)
