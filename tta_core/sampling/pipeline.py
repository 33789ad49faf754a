"""The built sample graph of a recipe and its generation loop: :func:`load_pipeline` builds
it with its trained weights, :meth:`Pipeline.batches` and :meth:`Pipeline.generate` run it.

Cost: conditioning is computed once per batch; a step is one network call (both CFG halves
in one batch) and a few tensor operations, with no host-device sync.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import torch

from ..diffusion import start_scale
from ..diffusion.guidance import guided_denoiser
from ..checkpoint import empty_parameters
from ..errors import TtaError, UsageError
from ..interfaces import Conditioning, unconditional
from ..precision import PRECISIONS, autocast_dtype, resolve_precision
from ..recipe import Recipe, build, check, component_kind, load_recipe
from ..roles import resolve_roles
from ..yamlio import to_plain
from . import estimate
from .device import pick_device
from .editing import Edit, load_audio, plan_edit
from .settings import NamesOptions, SampleSettings, per_text, resolve_settings, sampler_node, takes
from .weights import LoadedWeights, add_adapters, load_weights_for, weight_files


log = logging.getLogger("tta.sampling")

#: ``progress(step, steps, batch, batches)``: called after each sampling step (step from 1, batch from 0)
StepCallback = Callable[[int, int, int, int], None]


class NonFiniteAudioError(NamesOptions):
    """The graph produced NaN or infinite samples: nothing of that batch is written."""

    exit_code = 1


@dataclass
class Batch:
    """One generated batch: per item its prompt, negative, and index within the batch."""

    prompts: list[str]
    negatives: list[str]
    seed: int
    waves: torch.Tensor  # [B, N] float32 on the CPU; [B, C, N] when audio.channels is C > 1
    indices: list[int]  # position of each item in the flat list of requested outputs
    loudness: list[dict] | None = None  # per item, with SampleSettings.loudness: what normalisation did


@dataclass
class Pipeline:
    """The built sample graph of a recipe, with its weights loaded; see :func:`load_pipeline`."""

    recipe: Recipe
    conditioner: Any
    denoiser: Any
    process: Any
    autoencoder: Any
    vocoder: Any
    roles: dict[str, str]
    audio: Any  # tta_core.data.config.AudioConfig
    registry: Any = field(repr=False)
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    weights: dict[str, LoadedWeights] = field(default_factory=dict)
    run_dir: Path | None = None  # the run the weights came from (its cache/ keeps memory estimates)

    def __post_init__(self) -> None:
        self.precision = resolve_precision(self.precision, self.device)  # auto -> what this device runs natively

    @property
    def components(self) -> dict[str, Any]:
        """Component name -> the built component, for every role the pipeline has."""
        return {name: getattr(self, role) for role, name in self.roles.items() if getattr(self, role) is not None}

    # -- settings ---------------------------------------------------------------------------
    @property
    def defaults(self) -> Mapping[str, Any]:
        return to_plain(self.recipe.get("sample") or {})

    @property
    def sample_rate(self) -> int:
        return int(self.vocoder.sample_rate) if self.autoencoder.domain == "mel" else self.audio.sample_rate

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint folder the denoiser's weights came from."""
        w = self.weights.get(self.roles["denoiser"])
        return str(w.path.parent) if w is not None and w.path is not None else None

    def sampler_node(self, spec: str | Mapping | None = None) -> dict:
        """The sampler's ``{type: ...}`` node (see :func:`tta_core.sampling.settings.sampler_node`)."""
        return sampler_node(self.defaults, spec, self.registry)

    def settings(self, **options: Any) -> SampleSettings:
        """The options resolved against the recipe's ``sample:`` section: see
        :func:`tta_core.sampling.settings.resolve_settings` for each option and its default."""
        return resolve_settings(self, **options)

    def _load(self, path: str | os.PathLike, channels: int | None = None) -> torch.Tensor:
        """A whole clip at the recipe's rate: [N], or [C, N] with several channels."""
        return load_audio(self.audio, path, channels)

    def length_for(self, duration: float) -> int:
        """Mel frames (or samples) for ``duration`` seconds, rounded up to a length the
        autoencoder takes (``latent_shape`` raises ValueError for others)."""
        if self.autoencoder.domain == "mel":
            n = math.ceil(duration * self.vocoder.sample_rate / self.vocoder.hop_length - 1e-9)
        else:
            n = math.ceil(duration * self.audio.sample_rate - 1e-9)
        for m in range(max(n, 1), max(n, 1) + 4096):
            try:
                self.autoencoder.latent_shape(m)
                return m
            except ValueError:
                continue
        raise TtaError(f"the autoencoder takes no length between {n} and {n + 4095} (latent_shape raised for all)")

    # -- memory -----------------------------------------------------------------------------
    def memory_needed(self, st: SampleSettings, count: int) -> int | None:
        """Bytes one batch of ``count`` outputs needs at its peak beyond the loaded weights
        (:func:`tta_core.sampling.estimate.memory_needed`)."""
        return estimate.memory_needed(self, st, count)

    def check_memory(self, st: SampleSettings, count: int) -> None:
        """Refuse a generation whose batch is estimated to need more memory than the device
        has free (:func:`tta_core.sampling.estimate.check_memory`)."""
        estimate.check_memory(self, st, count)

    # -- generation -------------------------------------------------------------------------
    def generate(self, texts: Sequence[str] | str | None = None, *, rerank: Any = None,
                 **options: Any) -> tuple[torch.Tensor, int]:
        """Waveforms [len(texts) * n, N] (each prompt's n outputs in a row) and the rate.

        Options as :meth:`batches`: n, progress, and those of :meth:`settings`
        (steps, guidance, guidance_rescale, guidance_interval, sampler, seed, duration,
        batch_size, negative, decode_steps, init_audio, strength, keep, extend, audio_prompt,
        loudness). With ``audio.channels`` C > 1 the waveforms are [len(texts) * n, C, N].
        With an ``audio_prompt`` no text is needed. ``rerank``: an embedder with a text side
        (or its name / node): of each prompt's ``n`` outputs only the one most similar to the
        prompt is returned ([len(texts), N]).
        """
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if not texts and options.get("audio_prompt") is not None:
            texts = [f"audio prompt: {options['audio_prompt']}"]
        if not texts:
            raise UsageError("generate() needs at least one prompt (or an audio_prompt)")
        judge = None
        if rerank is not None:  # built (and checked) before anything is generated
            from ..eval.rerank import best, ranker

            judge = rerank if hasattr(rerank, "embed") else ranker(rerank, self.registry, recipe=self.recipe)
        batches = list(self.batches(texts, **options))
        waves = torch.cat([b.waves for b in batches])
        if judge is not None:
            n = int(options.get("n", 1))
            waves = torch.stack([waves[i * n + best(judge, t, waves[i * n:(i + 1) * n], self.sample_rate)[0]]
                                 for i, t in enumerate(texts)])
        return waves, self.sample_rate

    def batches(self, texts: Sequence[str], *, n: int = 1, progress: bool | StepCallback = False,
                settings: SampleSettings | None = None, memory_check: bool = False, part: Any = None,
                **options: Any) -> Iterator[Batch]:
        """Generate ``n`` outputs per prompt, ``batch_size`` at a time; batch k draws its
        latent noise (and its sampler's noise) from ``torch.Generator("cpu").manual_seed(seed + k)``.

        Options (or one ``settings``): steps, guidance, guidance_rescale, guidance_interval,
        sampler, seed, duration, batch_size, negative: a prompt (or one per text) whose
        conditioning replaces the unconditional half of guidance ("" or None:
        ``conditioner.null``), decode_steps (diffusion autoencoders). ``progress``: True for a
        bar (or log lines), or a function ``progress(step, steps, batch, batches)`` called after
        each sampling step (step counting from 1, batch from 0). ``part``: a
        :class:`tta_core.distributed.Part`: only the batches that are this process's
        (each with the seed it has in one process). ``memory_check``: first
        refuse a batch estimated to need more memory than the device has free
        (:meth:`check_memory`; a second or two, so ``tta-run sample`` does it and a loop of
        short generations need not).
        """
        st = settings if settings is not None else self.settings(**options)
        if n < 1:
            raise UsageError("n must be at least 1")
        negatives = per_text(st.negative, len(texts))
        try:
            sample = build(st.sampler, "sampler", self.registry)
            schedule = self.process.schedule(st.steps)
        except ValueError as exc:  # an option out of range (eta 2, more steps than T)
            raise UsageError(str(exc)) from None
        if memory_check:
            self.check_memory(st, len(texts) * n)
        length = self.length_for(st.duration)
        edit = plan_edit(self, st, length) if st.init is not None else None
        audio_cond = None
        if st.audio_prompt is not None:
            with torch.no_grad():
                audio_cond = self.conditioner.encode_audio(st.audio_prompt.wave[None].to(self.device),
                                                           self.audio.sample_rate)
        items = [(i, j) for i in range(len(texts)) for j in range(n)]
        total = math.ceil(len(items) / st.batch_size)
        for k, start in enumerate(range(0, len(items), st.batch_size)):
            if part is not None and not part.mine(k):
                continue
            chunk = items[start:start + st.batch_size]
            prompts = [texts[i] for i, _ in chunk]
            negs = [negatives[i] for i, _ in chunk]
            report = (lambda i, steps, x, k=k: progress(i + 1, steps, k, total)) if callable(progress) else progress
            waves = self._batch(prompts, negs, st.seed + k, sample, schedule, st, length, progress=report,
                                label=f"batch {k + 1}/{total}", edit=edit, audio_cond=audio_cond)
            _check_finite(waves, prompts, st.seed + k)
            notes = self._normalize(waves, st.loudness) if st.loudness is not None else None
            yield Batch(prompts, negs, st.seed + k, waves, list(range(start, start + len(chunk))), notes)

    def _normalize(self, waves: torch.Tensor, target: float) -> list[dict]:
        """Each output brought to ``target`` LUFS in place; per output, what was done."""
        from ..loudness import normalize_loudness

        notes = []
        for b in range(waves.shape[0]):
            try:
                waves[b], info = normalize_loudness(waves[b], self.sample_rate, target)
            except ValueError as exc:  # silent, or too short to measure: left as it is
                info = {"target_lufs": target, "skipped": str(exc)}
            notes.append(info)
        return notes

    @torch.no_grad()
    def _batch(self, prompts: list[str], negatives: list[str], seed: int, sample: Any, schedule: torch.Tensor,
               st: SampleSettings, length: int, *, progress: Any, label: str, edit: Edit | None = None,
               audio_cond: Conditioning | None = None) -> torch.Tensor:
        device, batch = self.device, len(prompts)
        if audio_cond is not None:
            cond = Conditioning.cat([audio_cond] * batch).to(device)
        else:
            cond = self.conditioner.encode_text(prompts).to(device)
        uncond = self._uncond(negatives).to(device) if st.guidance.active else None
        denoise = guided_denoiser(self.process, self.network(), cond, uncond, st.guidance)
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (batch, *self.autoencoder.latent_shape(length))
        # unit noise drawn on the CPU generator (as diffusers' prepare_latents), so the numbers do
        # not depend on the device; the starting latent x_T is it scaled to the schedule's first
        # level (start_scale: 1 for a variance-preserving process, sigma_0 for a variance-exploding one)
        noise = torch.randn(shape, generator=generator).to(device)
        if edit is not None:
            denoise, x_T, schedule = edit.begin(denoise, noise, schedule)
        else:
            x_T = noise * start_scale(schedule)
        latent = self._sample(sample, denoise, x_T, schedule, generator, progress, label)
        if edit is not None:
            latent = edit.end(latent)
        wave = self._decode(latent, generator, st.decode_steps)
        channels, samples = self.audio.channels, int(round(st.duration * self.sample_rate))
        wave = (wave.reshape(batch, channels, -1) if channels > 1 else wave.reshape(batch, -1)).float().cpu()
        if wave.shape[-1] < samples:
            raise TtaError(f"the decoder gave {wave.shape[-1]} samples for a {samples}-sample request: "
                           f"its latent_shape({length}) does not match what decode returns")
        wave = wave[..., :samples]
        if edit is not None and edit.crossfade is not None:  # the kept spans are the original audio
            wave = edit.crossfade.apply(wave)
        return wave

    def _sample(self, sample: Any, denoise: Any, x_T: torch.Tensor, schedule: torch.Tensor,
                generator: torch.Generator, progress: Any, label: str) -> torch.Tensor:
        """``progress``: a bool (a bar or not) or the sampler's ``callback(step, total, x)``."""
        if schedule.shape[0] < 2:  # strength 0: no step to take
            return x_T
        if callable(progress):
            return sample(denoise, x_T, schedule, generator=generator, callback=progress)
        bar = _progress(progress, schedule.shape[0] - 1, label)
        try:
            return sample(denoise, x_T, schedule, generator=generator,
                          callback=(lambda i, total, x: bar.update(1)) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def _decode(self, latent: torch.Tensor, generator: torch.Generator | None, steps: int | None) -> torch.Tensor:
        """Latents to audio: the autoencoder's decode, then the vocoder for mel autoencoders."""
        kwargs = {"generator": generator} if generator is not None and takes(self.autoencoder.decode, "generator") else {}
        if steps is not None:
            kwargs["steps"] = int(steps)
        decoded = self.autoencoder.decode(latent, **kwargs)
        return self.vocoder(decoded) if self.autoencoder.domain == "mel" else decoded

    def _uncond(self, negatives: list[str]) -> Conditioning:
        null = unconditional(self.denoiser, self.conditioner)
        if not any(negatives):
            return null(len(negatives))
        if all(negatives):
            return self.conditioner.encode_text(negatives)
        parts = [self.conditioner.encode_text([neg]) if neg else null(1) for neg in negatives]
        return Conditioning.cat(parts)

    def network(self) -> Any:
        """The denoiser as the sampler calls it: under autocast in the pipeline's precision."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return self.denoiser
        net, device_type = self.denoiser, self.device.type

        def autocast_net(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype):
                return net(x, t, cond).float()
        return autocast_net


def _check_finite(waves: torch.Tensor, prompts: Sequence[str], seed: int) -> None:
    bad = (~torch.isfinite(waves.reshape(waves.shape[0], -1))).any(dim=1).tolist()
    if any(bad):
        named = sorted({repr(p) for p, b in zip(prompts, bad) if b})
        text = (f"the generated audio of {sum(bad)} output(s) of the batch with seed {seed} is not finite (NaN or "
                f"infinity), for the prompt(s) {', '.join(named)}; nothing of that batch was written.")
        raise NonFiniteAudioError(text.replace("{", "{{").replace("}", "}}")
                                  + " Lower {guidance}, run in fp32 ({precision} fp32), or check the weights "
                                    "(the last training stage's log shows non-finite losses)")


def _progress(enabled: bool, total: int, label: str):
    """A bar on a terminal, a plain line every few seconds in a log (tta_core.progress)."""
    if not enabled:
        return None
    from ..progress import Progress

    return Progress(total, f"sample {label}", "steps")


def _build_graph(recipe: Recipe, registry: Any, roles: dict[str, str], audio: Any,
                 empty: Collection[str] = ()) -> dict[str, Any]:
    """Role -> built component, checked to fit together (a mel autoencoder has a vocoder).
    The components named in ``empty`` are built with placeholder parameters (their weights
    load next: :func:`tta_core.checkpoint.empty_parameters`)."""
    def make(name: str) -> Any:
        node, kind = recipe.components[name], component_kind(recipe, name, registry)
        if name in empty:
            try:
                with empty_parameters():
                    return build(node, kind, registry, where=f"components.{name}", audio=audio)
            except Exception:  # code that reads its parameters while it builds: built as usual
                log.debug("components.%s: built with initialised parameters", name, exc_info=True)
        return build(node, kind, registry, where=f"components.{name}", audio=audio)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # components built the same way every time (then weights load)
        built = {role: make(name) for role, name in roles.items()}
    autoencoder = built["autoencoder"]
    if getattr(autoencoder, "domain", None) not in ("mel", "waveform"):
        raise TtaError(f"autoencoder '{roles['autoencoder']}' has domain {getattr(autoencoder, 'domain', None)!r}; "
                       "expected 'mel' or 'waveform'")
    if autoencoder.domain == "mel" and "vocoder" not in built:
        raise UsageError(f"autoencoder '{roles['autoencoder']}' decodes to mel, and the recipe has no vocoder "
                         "in components: to turn mel into audio")
    from ..data.audio import channels_problem

    problem = channels_problem(autoencoder, audio.channels)
    if problem:
        raise UsageError(problem)
    if autoencoder.domain == "waveform":
        built.pop("vocoder", None)
        roles.pop("vocoder", None)
    return built


def load_pipeline(recipe: str | os.PathLike | Recipe, *, run_dir: str | os.PathLike | None = None,
                  ckpt: str | os.PathLike | None = None, device: str | None = None, precision: str = "fp32",
                  ema: bool = True, overrides: Sequence[str] = (), registry: Any = None,
                  adapters: Sequence[Any] = ()) -> Pipeline:
    """Build a recipe's sample graph and load its trained weights.

    ``run_dir`` defaults to the recipe's ``run_dir:``, else ``runs/<recipe name>``; ``ckpt`` is one checkpoint folder to
    take weights from first; ``ema=False`` loads the raw weights instead of the EMA copy;
    ``precision`` (fp32, bf16, fp16, or auto: bf16 where the device computes it natively) runs the
    denoiser under autocast. Roles: :func:`tta_core.roles.resolve_roles`; weights: the rule of
    :mod:`tta_core.sampling.weights`. ``adapters``: more adapters to apply, each ``PATH``,
    ``PATH:SCALE`` or (path, scale); a path is an adapter file, or a checkpoint or stage folder
    with adapters (a run's own adapters are applied without asking).
    """
    if registry is None:
        from ..discovery import get_plugins

        registry = get_plugins().registry
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    check(recipe, registry)
    if precision not in PRECISIONS:
        raise UsageError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
    roles = resolve_roles(recipe, registry)
    audio = recipe.audio
    run_dir = Path(run_dir) if run_dir is not None else recipe.run_dir
    # a network whose weights come from a file is built empty and takes the file's tensors
    # (no initialisation, held once: load_state); one that loads its own (pretrained:) is built as usual
    files = weight_files(list(roles.values()), recipe, run_dir, ckpt=ckpt, ema=ema)
    empty = [name for name in files if recipe.components[name].get("pretrained") in (None, False)]
    built = _build_graph(recipe, registry, roles, audio, empty)
    by_name = {roles[role]: c for role, c in built.items()}
    weights = load_weights_for(by_name, recipe, run_dir, ckpt=ckpt, ema=ema)
    if adapters:
        kinds = {name: component_kind(recipe, name, registry) for name in by_name}
        for name, files in add_adapters(by_name, kinds, adapters, ema=ema).items():
            weights[name] = replace(weights[name], adapters=(*weights[name].adapters, *files))
    dev = pick_device(device)
    for component in built.values():
        if isinstance(component, torch.nn.Module):
            component.to(dev).eval().requires_grad_(False)
    return Pipeline(recipe=recipe, conditioner=built["conditioner"], denoiser=built["denoiser"],
                    process=built["process"], autoencoder=built["autoencoder"], vocoder=built.get("vocoder"),
                    roles=roles, audio=audio, registry=registry, device=dev, precision=precision,
                    weights=weights, run_dir=run_dir)
