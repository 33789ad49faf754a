"""The sample graph: text -> conditioner -> guided denoiser -> sampler -> decode -> waveform.

From Python::

    from tta_core.sampling import load_pipeline

    pipe = load_pipeline("recipes/quickstart.yaml", run_dir="runs/quickstart", device="cpu")
    waves, sample_rate = pipe.generate(["a dog barks"], steps=50, guidance=3.0, seed=0, n=2)

``tta-run RECIPE sample`` (:mod:`tta_core.commands.sample`) is a thin layer over this.

Roles come from the recipe's ``sample:`` section (``autoencoder``, ``conditioner``,
``denoiser``, ``process``, ``vocoder`` name entries of ``components:``), else the unique
component of that kind. The vocoder is needed only when the autoencoder's domain is ``mel``.

Weights (the rule, also in docs/sampling.md): a component with parameters loads the latest
checkpoint of the last stage in ``train:`` whose ``trains:`` lists it, from
``<run dir>/<stage>/checkpoints/``: ``<name>.ema.safetensors`` when the stage kept an EMA
(unless ``ema=False``), else ``<name>.safetensors``; else ``<run dir>/weights/<name>.safetensors``
(weights the run was given, as ``tta-run import`` writes for parts no stage trains). ``ckpt=``
names one checkpoint folder to take weights from first. A component needs no checkpoint when it has no parameters
(Griffin-Lim, a process) or when its recipe node sets ``pretrained:`` (its factory loads its
own weights; a checkpoint, when one exists, still wins). Any other component without weights
is an error that names the stage to train, so nothing is sampled from random weights.

Cost: conditioning is computed once per batch; a step is one network call (both CFG halves
in one batch) and a few tensor operations, with no host-device sync.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from .checkpoint import Checkpoint, load_checkpoint, load_state, load_weights
from .diffusion.guidance import Guidance, guided_denoiser
from .errors import TtaError, UsageError
from .interfaces import Conditioning, unconditional
from .precision import PRECISIONS, resolve_precision
from .recipe import Recipe, build, check, component_kind, load_recipe
from .runs import RunDir, default_run_dir, has_params, stages_training, weights_file
from .yamlio import to_plain

ROLES = ("conditioner", "denoiser", "process", "autoencoder", "vocoder")

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class MissingWeightsError(TtaError):
    """A trainable component has no trained weights to sample with."""

    exit_code = 1


# -- the recipe's audio section ------------------------------------------------------------------


def audio_config(recipe: Recipe) -> Any:
    """The recipe's ``audio:`` section as the data layer's validated ``AudioConfig`` (the
    value factories get as ``audio=``, as in training)."""
    from .data.config import AudioConfig

    return AudioConfig.from_mapping(to_plain(recipe.get("audio")))


def check_duration(audio: Any, seconds: float, where: str = "duration") -> float:
    """``seconds`` when an output of that length can be made and pictured: finite, and longer
    than one STFT window of the recipe's audio; else a UsageError saying the shortest."""
    from .errors import RecipeError

    shortest = (audio.mel.n_fft + 1) / audio.sample_rate
    try:  # the data layer's rule for any example length (AudioConfig.with_duration)
        fits = math.isfinite(seconds) and audio.with_duration(seconds) is not None
    except RecipeError:
        fits = False
    if not fits:
        raise UsageError(f"{where} {seconds:g} s is too short: an output must be longer than one STFT window of the "
                         f"recipe's audio ({audio.mel.n_fft} samples at {audio.sample_rate} Hz), at least {shortest:.3g} s")
    return float(seconds)


# -- roles and weights ---------------------------------------------------------------------------


def resolve_roles(recipe: Recipe, registry: Any, strict: bool = True) -> dict[str, str]:
    """Role -> component name: the ``sample:`` choice, else the only component of the kind.
    Strict (sampling): a missing or ambiguous role is an error; else it is left out."""
    choice = recipe.get("sample") or {}
    kinds = {name: component_kind(recipe, name, registry) for name in recipe.components}
    roles, problems = {}, []
    for role in ROLES:
        if isinstance(choice.get(role), str):
            roles[role] = choice[role]
            continue
        named = [n for n, k in kinds.items() if k == role]
        if len(named) == 1:
            roles[role] = named[0]
        elif len(named) > 1:
            problems.append(f"the recipe has several {role}s ({', '.join(named)}): "
                            f"say which one samples with sample: {{{role}: NAME}}")
        elif role != "vocoder":
            problems.append(f"the recipe has no {role} in components: (sampling needs one)")
    if problems and strict:
        raise UsageError("cannot build the sample graph: " + "; ".join(problems))
    return roles


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


def load_weights_for(components: Mapping[str, Any], recipe: Recipe, run_dir: Path, *,
                     ckpt: str | os.PathLike | None = None, ema: bool = True) -> dict[str, LoadedWeights]:
    """Load trained weights into ``components`` (name -> built component) by the rule in
    the module docstring; every component that lacks them is reported at once."""
    run = RunDir(run_dir)
    chosen: Checkpoint | None = load_checkpoint(ckpt) if ckpt is not None else None
    loaded, missing = {}, []
    for name, component in components.items():
        if not has_params(component):
            loaded[name] = LoadedWeights(name, None, source="none")
            continue
        path, use_ema = None, False
        if chosen is not None:
            for e in ((True, False) if ema else (False,)):
                if (chosen.path / weights_file(name, e)).exists():
                    path, use_ema = chosen.path / weights_file(name, e), e
                    break
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
            ref = recipe.path
            if stages:
                missing.append(f"'{name}' has no trained weights in {run.checkpoints(stages[-1])}: "
                               f"train it first with `tta-run {ref} train --stage {stages[-1]}`")
            else:
                missing.append(f"'{name}' has parameters but no stage of train: trains it and its "
                               "node sets no pretrained:; add it to a stage's trains: and run "
                               f"`tta-run {ref} train`")
    if missing:
        where = f" (run dir {run.root}" + (f", --ckpt {ckpt}" if ckpt else "") + ")"
        raise MissingWeightsError("refusing to sample from untrained weights" + where + ":\n  "
                                  + "\n  ".join(missing))
    return loaded


# -- the pipeline -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides a generation, resolved (see :meth:`Pipeline.settings`)."""

    steps: int
    guidance: Guidance
    sampler: dict
    seed: int
    duration: float
    batch_size: int
    negative: str | Sequence[str] | None = None
    decode_steps: int | None = None  # diffusion autoencoders: steps of their decoding
    init: "InitAudio | None" = None  # audio to vary (strength) or inpaint around (keep)
    audio_prompt: "AudioPrompt | None" = None  # condition on audio instead of text (CLAP)
    loudness: float | None = None  # target integrated loudness (LUFS) of each output


#: What a process really grows by, over the tensors memory_needed counts: allocator
#: rounding and the libraries' scratch buffers (a quickstart generation of 60-120 s on a CPU
#: grew by 1.8-1.9 times the count).
MEMORY_MARGIN = 2.0

#: Seconds over which kept spans fade into the generated audio at their inner edges.
KEEP_FADE = 0.02


@dataclass(frozen=True)
class InitAudio:
    """An init clip, fitted to the output's length: what ``strength`` and ``keep`` act on."""

    path: str
    wave: torch.Tensor  # [N] or [C, N] at the recipe's rate, N = the output's samples
    strength: float | None  # None: only inpainting (generation starts from noise)
    keep: tuple[tuple[float, float], ...]  # kept spans in seconds
    extend: float | None = None  # seconds appended (continuation)

    def describe(self) -> dict:
        return {"init_audio": self.path, "strength": self.strength,
                "keep": [list(span) for span in self.keep] or None, "extend": self.extend}


@dataclass(frozen=True)
class AudioPrompt:
    path: str
    wave: torch.Tensor  # [N] mono at the recipe's rate


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

    def __post_init__(self) -> None:
        self.precision = resolve_precision(self.precision, self.device)  # auto -> what this device runs natively

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
        """The sampler's ``{type: ...}`` node: ``spec`` as a name (keeping the recipe's
        options when it names the recipe's sampler) or a node, else the recipe's (ddim)."""
        node = dict(self.defaults.get("sampler") or {"type": "ddim"})
        if isinstance(spec, str):
            node = node if node.get("type") == spec else {"type": spec}
        elif spec is not None:
            node = dict(spec)
        if not self.registry.has("sampler", node.get("type")):
            raise UsageError(self.registry.unknown_message("sampler", str(node.get("type"))))
        return node

    def settings(self, *, steps: int | None = None, guidance: float | None = None,
                 guidance_rescale: float | None = None, guidance_interval: Sequence[float] | None = None,
                 sampler: str | Mapping | None = None, seed: int | None = None, duration: float | None = None,
                 batch_size: int | None = None, negative: str | Sequence[str] | None = None,
                 decode_steps: int | None = None, init_audio: str | os.PathLike | None = None,
                 strength: float | None = None, keep: str | Sequence[Sequence[float]] | None = None,
                 extend: float | None = None, audio_prompt: str | os.PathLike | None = None,
                 loudness: float | None = None) -> "SampleSettings":
        """Options given here, else the recipe's ``sample:`` values, else the defaults
        (50 steps, guidance 1, ddim, seed 0, the audio duration, batches of 8; a diffusion
        autoencoder's own ``decode_steps``).

        Audio-guided generation (tta_core.diffusion.editing): ``init_audio`` (a file) with
        ``strength`` (0 keeps it, 1 ignores it; SDEdit) and/or ``keep`` (spans in seconds,
        "0:1.5,3:4", regenerated around; inpainting), or ``extend`` (seconds to continue it
        by). The output is as long as the init audio (plus ``extend``) unless ``duration`` is
        given. ``audio_prompt`` (a file) conditions on its audio embedding instead of text,
        for conditioners with an audio side (CLAP). ``loudness``: each output normalised to
        this integrated loudness in LUFS (tta_core.loudness), with a true-peak ceiling.
        """
        d = self.defaults
        init, prompt = None, None
        if init_audio is not None:
            init, duration = self._init(init_audio, strength, keep, extend, duration)
        elif strength is not None or keep or extend is not None:
            raise UsageError("--strength, --keep and --extend act on an init clip: give --init-audio FILE")
        if audio_prompt is not None:
            if not callable(getattr(self.conditioner, "encode_audio", None)):
                raise UsageError(f"--audio-prompt: the conditioner '{self.roles['conditioner']}' has no audio side "
                                 "(only CLAP-conditioned models, such as recipes/audioldm_clap.yaml, take audio prompts)")
            prompt = AudioPrompt(str(audio_prompt), self._load(audio_prompt, channels=1))
        if loudness is not None and not -70.0 <= float(loudness) <= 0.0:
            raise UsageError(f"--loudness is a target in LUFS between -70 and 0 (e.g. -14, -23), got {loudness}")

        def pick(value: Any, key: str, default: Any) -> Any:
            return value if value is not None else d.get(key, default)

        try:
            guide = Guidance(scale=float(pick(guidance, "guidance", 1.0)),
                             rescale=float(pick(guidance_rescale, "guidance_rescale", 0.0)),
                             interval=_interval(pick(guidance_interval, "guidance_interval", None)))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        out = SampleSettings(
            steps=int(pick(steps, "steps", 50)),
            guidance=guide,
            sampler=self.sampler_node(sampler),
            seed=int(pick(seed, "seed", 0)),
            duration=float(pick(duration, "duration", self.audio.duration)),
            batch_size=int(pick(batch_size, "batch_size", 8)),
            negative=pick(negative, "negative", None),
            decode_steps=pick(decode_steps, "decode_steps", None),
            init=init, audio_prompt=prompt,
            loudness=None if loudness is None else float(loudness),
        )
        if out.steps < 1 or out.batch_size < 1:
            raise UsageError("steps and batch_size must be at least 1")
        check_duration(self.audio, out.duration)
        if out.decode_steps is not None:
            if not _takes(self.autoencoder.decode, "steps"):
                raise UsageError(f"decode_steps: the autoencoder '{self.roles['autoencoder']}' decodes in one "
                                 "pass (only diffusion autoencoders such as diffae take decoding steps)")
            if int(out.decode_steps) < 1:
                raise UsageError(f"decode_steps must be at least 1, got {out.decode_steps}")
        return out

    def _load(self, path: str | os.PathLike, channels: int | None = None) -> torch.Tensor:
        """A whole clip at the recipe's rate: [N], or [C, N] with several channels."""
        import dataclasses

        from .data.audio import BadAudio, load_clip

        audio = self.audio if channels is None else dataclasses.replace(self.audio, channels=channels)
        try:
            return load_clip(path, dataclasses.replace(audio, min_duration=0.0, normalize=False)).wave
        except BadAudio as exc:
            raise UsageError(f"cannot use {path}: {exc}") from None

    def _init(self, path, strength, keep, extend, duration) -> tuple[InitAudio, float]:
        from .data.audio import pad_to
        from .diffusion.editing import parse_spans, start_index

        wave = self._load(path)
        rate = self.audio.sample_rate
        spans = parse_spans(keep)
        if strength is not None:
            start_index(1, float(strength))  # checks the range
        if extend is not None:
            if float(extend) <= 0:
                raise UsageError(f"--extend is a number of seconds to add, got {extend}")
            spans = [(0.0, wave.shape[-1] / rate), *spans]
            wave = pad_to(wave, wave.shape[-1] + int(round(float(extend) * rate)))
        if duration is None:
            duration = wave.shape[-1] / rate
        n = int(round(float(duration) * rate))
        wave = pad_to(wave[..., :n], n)
        if strength is None and not spans:
            raise UsageError("--init-audio needs --strength S (a variation) or --keep START:END (inpainting)")
        return InitAudio(str(path), wave, None if strength is None else float(strength), tuple(spans),
                         None if extend is None else float(extend)), float(duration)

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

    # -- generation -------------------------------------------------------------------------
    def generate(self, texts: Sequence[str] | str | None = None, *, rerank: Any = None,
                 **options: Any) -> tuple[torch.Tensor, int]:
        """Waveforms [len(texts) * n, N] (each prompt's n outputs in a row) and the rate.

        Options as :meth:`batches`: n, progress, and those of :meth:`settings`
        (steps, guidance, guidance_rescale, guidance_interval, sampler, seed, duration,
        batch_size, negative, decode_steps, init_audio, strength, keep, extend, audio_prompt,
        loudness). With ``audio.channels`` C > 1 the waveforms are [len(texts) * n, C, N].
        With an ``audio_prompt`` no text is needed. ``rerank``: an embedder with a text side
        (or its name / node, e.g. ``{"type": "clap", "pretrained": FILE}``): of each prompt's
        ``n`` outputs only the one most similar to the prompt is returned ([len(texts), N]).
        """
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if not texts and options.get("audio_prompt") is not None:
            texts = [f"audio prompt: {options['audio_prompt']}"]
        if not texts:
            raise UsageError("generate() needs at least one prompt (or an audio_prompt)")
        judge = None
        if rerank is not None:  # built (and checked) before anything is generated
            from .eval.rerank import best, ranker

            judge = rerank if hasattr(rerank, "embed") else ranker(rerank, self.registry, recipe=self.recipe)
        batches = list(self.batches(texts, **options))
        waves = torch.cat([b.waves for b in batches])
        if judge is not None:
            n = int(options.get("n", 1))
            waves = torch.stack([waves[i * n + best(judge, t, waves[i * n:(i + 1) * n], self.sample_rate)[0]]
                                 for i, t in enumerate(texts)])
        return waves, self.sample_rate

    def memory_needed(self, st: "SampleSettings", count: int) -> int | None:
        """Bytes one batch of ``count`` outputs (at most ``st.batch_size``) needs at its peak
        beyond the loaded weights: the larger of a guided denoiser call and the decoding
        (autoencoder, then vocoder), plus the batch's audio. Estimated on fake tensors
        (tta_core.memory); a vocoder whose code needs the data (Griffin-Lim's inverse STFT
        checks its window) is measured for real on 16 frames and scaled to the length, as a
        vocoder's memory grows in proportion to it. None when a part cannot be estimated."""
        from .memory import Spec, measured_bytes, peak_bytes, unchanged

        b = max(1, min(st.batch_size, count))
        length = self.length_for(st.duration)
        shape = (b, *self.autoencoder.latent_shape(length))
        kwargs = {} if st.decode_steps is None else {"steps": int(st.decode_steps)}
        parts = [p for p in (self.conditioner, self.denoiser, self.process, self.autoencoder, self.vocoder) if p is not None]
        with torch.no_grad(), unchanged(*parts):
            cond = self.conditioner.encode_text(["a"] * b).to(self.device)
            uncond = unconditional(self.denoiser, self.conditioner)(b).to(self.device) if st.guidance.active else None
            denoise = guided_denoiser(self.process, self._net(), cond, uncond, st.guidance)
            level = Spec((b,), device=self.device)
            steps = peak_bytes(denoise, Spec(shape, device=self.device), level, level)
            decode = peak_bytes(lambda z: self.autoencoder.decode(z, **kwargs), Spec(shape, device=self.device))
            if decode is not None and self.autoencoder.domain == "mel":
                mel = (b, 1, length, self.audio.mel.n_mels)
                vocode = peak_bytes(self.vocoder, Spec(mel, device=self.device))
                if vocode is None:
                    short = min(length, 16)
                    probe = torch.full((1, 1, short, mel[3]), -5.0, device=self.device)  # a quiet log-mel
                    vocode = measured_bytes(self.vocoder, probe) * b * length // short
                decode = max(decode, vocode) + 4 * math.prod(mel)
        if steps is None or decode is None:
            return None
        audio = b * self.audio.channels * int(round(st.duration * self.sample_rate)) * 4
        return max(steps, decode) + audio

    def check_memory(self, st: "SampleSettings", count: int) -> None:
        """Refuse (UsageError) a generation whose batch needs more memory than the device has
        free, saying the estimate; a warning when it needs more than half of it. The estimate
        is :meth:`memory_needed` times MEMORY_MARGIN."""
        from .memory import available_bytes, format_bytes

        need, have = self.memory_needed(st, count), available_bytes(self.device)
        if need is None or have is None:
            return
        need = int(need * MEMORY_MARGIN)
        b = max(1, min(st.batch_size, count))
        what = (f"a batch of {b} output(s) of {st.duration:g} s needs about {format_bytes(need)} at its peak "
                f"(estimated), and {self.device.type} memory has {format_bytes(have)} free")
        if need > have:
            raise UsageError(f"{what}: lower --duration or --batch-size, or run it anyway with --skip-memory-check")
        if need > have / 2:
            print(f"warning: {what}", file=sys.stderr)

    def batches(self, texts: Sequence[str], *, n: int = 1, progress: bool = False,
                settings: "SampleSettings | None" = None, memory_check: bool = False,
                **options: Any) -> Iterator[Batch]:
        """Generate ``n`` outputs per prompt, ``batch_size`` at a time; batch k draws its
        latent noise (and its sampler's noise) from ``torch.Generator("cpu").manual_seed(seed + k)``.

        Options (or one ``settings``): steps, guidance, guidance_rescale, guidance_interval,
        sampler, seed, duration, batch_size, negative: a prompt (or one per text) whose
        conditioning replaces the unconditional half of guidance ("" or None:
        ``conditioner.null``), decode_steps (diffusion autoencoders). ``memory_check``: first
        refuse a batch estimated to need more memory than the device has free
        (:meth:`check_memory`; a second or two, so ``tta-run sample`` does it and a loop of
        short generations need not).
        """
        st = settings if settings is not None else self.settings(**options)
        if n < 1:
            raise UsageError("n must be at least 1")
        negatives = _per_text(st.negative, len(texts))
        try:
            sample = build(st.sampler, "sampler", self.registry)
            schedule = self.process.schedule(st.steps)
        except ValueError as exc:  # an option out of range (eta 2, more steps than T)
            raise UsageError(str(exc)) from None
        if memory_check:
            self.check_memory(st, len(texts) * n)
        length = self.length_for(st.duration)
        samples = int(round(st.duration * self.sample_rate))
        edit = self._edit(st, length) if st.init is not None else None
        audio_cond = None
        if st.audio_prompt is not None:
            with torch.no_grad():
                audio_cond = self.conditioner.encode_audio(st.audio_prompt.wave[None].to(self.device),
                                                           self.audio.sample_rate)
        items = [(i, j) for i in range(len(texts)) for j in range(n)]
        total = math.ceil(len(items) / st.batch_size)
        for k, start in enumerate(range(0, len(items), st.batch_size)):
            chunk = items[start:start + st.batch_size]
            prompts = [texts[i] for i, _ in chunk]
            negs = [negatives[i] for i, _ in chunk]
            waves = self._batch(prompts, negs, st.seed + k, sample, schedule, st.guidance, length, samples,
                                progress=progress, label=f"batch {k + 1}/{total}", decode_steps=st.decode_steps,
                                edit=edit, audio_cond=audio_cond)
            _check_finite(waves, prompts, st.seed + k)
            notes = None
            if st.loudness is not None:
                from .loudness import normalize_loudness

                notes = []
                for b in range(waves.shape[0]):
                    try:
                        waves[b], info = normalize_loudness(waves[b], self.sample_rate, st.loudness)
                    except ValueError as exc:  # silent, or too short to measure: left as it is
                        info = {"target_lufs": st.loudness, "skipped": str(exc)}
                    notes.append(info)
            yield Batch(prompts, negs, st.seed + k, waves, list(range(start, start + len(chunk))), notes)

    def _edit(self, st: "SampleSettings", length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The init clip's latent [1, ...], the kept mask [1, ...] and the schedule row to start from."""
        from .data.audio import with_channels
        from .data.mel import log_mel
        from .diffusion.editing import latent_mask, start_index

        init, ae = st.init, self.autoencoder
        shape = ae.latent_shape(length)
        with torch.no_grad():
            wave = init.wave[None].to(self.device).float()
            z0 = ae.encode(log_mel(wave, self.audio)) if ae.domain == "mel" else ae.encode(with_channels(wave))
        t = int(shape[1])  # the latent's time axis: crop or pad (with the latent of silence's edge) to it
        z0 = z0[:, :, :t]
        if z0.shape[2] < t:
            pad = z0[:, :, -1:].expand(*z0.shape[:2], t - z0.shape[2], *z0.shape[3:])
            z0 = torch.cat([z0, pad], dim=2)
        rate = (self.vocoder.sample_rate / self.vocoder.hop_length) if ae.domain == "mel" else self.audio.sample_rate
        mask = latent_mask(shape, init.keep, length, rate).to(self.device)
        start = start_index(st.steps, init.strength) if init.strength is not None else 0
        return z0.float(), mask, start, self._keep_weights(init)

    def _keep_weights(self, init: InitAudio) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(the init clip at the output's rate, a weight per sample: 1 in the kept spans, 0
        elsewhere, linear ramps of KEEP_FADE seconds inside each span's edges)."""
        if not init.keep:
            return None
        wave = init.wave.float()
        if self.sample_rate != self.audio.sample_rate:
            import torchaudio.functional as AF

            wave = AF.resample(wave, self.audio.sample_rate, self.sample_rate)
        n, rate = wave.shape[-1], self.sample_rate
        t = torch.arange(n, dtype=torch.float64) / rate
        weight = torch.zeros(n, dtype=torch.float64)
        for lo, hi in init.keep:
            rise = torch.ones(n, dtype=torch.float64) if lo <= 0 else ((t - lo) / KEEP_FADE).clamp(0, 1)
            fall = torch.ones(n, dtype=torch.float64) if hi * rate >= n else ((hi - t) / KEEP_FADE).clamp(0, 1)
            weight = torch.maximum(weight, torch.minimum(rise, fall))
        return wave, weight.float()

    @torch.no_grad()
    def _batch(self, prompts: list[str], negatives: list[str], seed: int, sample: Any, schedule: torch.Tensor,
               guide: Guidance, length: int, samples: int, *, progress: bool, label: str,
               decode_steps: int | None = None, edit: tuple | None = None,
               audio_cond: Conditioning | None = None) -> torch.Tensor:
        from .diffusion.editing import inpainting_denoiser, noised

        device, batch = self.device, len(prompts)
        if audio_cond is not None:
            cond = Conditioning.cat([audio_cond] * batch).to(device)
        else:
            cond = self.conditioner.encode_text(prompts).to(device)
        uncond = self._uncond(negatives).to(device) if guide.active else None
        denoise = guided_denoiser(self.process, self._net(), cond, uncond, guide)
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (batch, *self.autoencoder.latent_shape(length))
        x_T = torch.randn(shape, generator=generator).to(device)  # as diffusers' prepare_latents
        z0 = mask = keep = None
        if edit is not None:
            z0, mask, start, keep = edit
            z0 = z0.expand(shape)
            if mask.any():
                denoise = inpainting_denoiser(denoise, z0, mask, x_T)
            if start >= schedule.shape[0] - 1:  # strength 0: the init's own latent, no step to take
                schedule, x_T = schedule[-1:], z0
            elif start > 0:  # SDEdit: the init's latent noised to the level the remaining steps start at
                level = schedule[start].to(device)
                schedule = schedule[start:]
                x_T = noised(z0, x_T, level[0].expand(batch), level[1].expand(batch))
        bar = _progress(progress, schedule.shape[0] - 1, label)
        try:
            if schedule.shape[0] < 2:  # strength 0: no step to take
                latent = x_T
            else:
                latent = sample(denoise, x_T, schedule, generator=generator,
                                callback=(lambda i, total, x: bar.update(1)) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        if mask is not None:
            latent = torch.where(mask, z0, latent)
        wave = self._decode(latent, generator, decode_steps)
        channels = self.audio.channels
        wave = (wave.reshape(batch, channels, -1) if channels > 1 else wave.reshape(batch, -1)).float().cpu()
        if wave.shape[-1] < samples:
            raise TtaError(f"the decoder gave {wave.shape[-1]} samples for a {samples}-sample request: "
                           f"its latent_shape({length}) does not match what decode returns")
        wave = wave[..., :samples]
        if keep is not None:  # the kept spans are the original audio, crossfaded into the new
            original, weight = keep
            n = min(samples, original.shape[-1])
            w = weight[:n]
            wave[..., :n] = w * original[..., :n] + (1 - w) * wave[..., :n]
        return wave

    def _decode(self, latent: torch.Tensor, generator: torch.Generator | None, steps: int | None) -> torch.Tensor:
        """Latents to audio: the autoencoder's decode, then the vocoder for mel autoencoders."""
        kwargs = {"generator": generator} if generator is not None and _takes(self.autoencoder.decode, "generator") else {}
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

    def _net(self) -> Any:
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            return self.denoiser
        net, device_type = self.denoiser, self.device.type

        def autocast_net(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype):
                return net(x, t, cond).float()
        return autocast_net


class NonFiniteAudioError(TtaError):
    """The graph produced NaN or infinite samples: nothing of that batch is written."""

    exit_code = 1


def _check_finite(waves: torch.Tensor, prompts: Sequence[str], seed: int) -> None:
    bad = (~torch.isfinite(waves.reshape(waves.shape[0], -1))).any(dim=1).tolist()
    if any(bad):
        named = sorted({repr(p) for p, b in zip(prompts, bad) if b})
        raise NonFiniteAudioError(
            f"the generated audio of {sum(bad)} output(s) of the batch with seed {seed} is not finite (NaN or "
            f"infinity), for the prompt(s) {', '.join(named)}; nothing of that batch was written. Lower --guidance, "
            "run in fp32 (--precision fp32), or check the weights (the last training stage's log shows "
            "non-finite losses)")


def _interval(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    return (lo, hi)


def _per_text(value: str | Sequence[str] | None, count: int) -> list[str]:
    if value is None or isinstance(value, str):
        return [value or ""] * count
    value = [v or "" for v in value]
    if len(value) != count:
        raise UsageError(f"got {len(value)} negative prompts for {count} prompts")
    return value


def _takes(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _progress(enabled: bool, total: int, label: str):
    """A bar on a terminal, a plain line every few seconds in a log (tta_core.progress)."""
    if not enabled:
        return None
    from .progress import Progress

    return Progress(total, f"sample {label}", "steps")


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: {exc}") from None


def load_pipeline(recipe: str | os.PathLike | Recipe, *, run_dir: str | os.PathLike | None = None,
                  ckpt: str | os.PathLike | None = None, device: str | None = None, precision: str = "fp32",
                  ema: bool = True, overrides: Sequence[str] = (), registry: Any = None) -> Pipeline:
    """Build a recipe's sample graph and load its trained weights.

    ``run_dir`` defaults to the recipe's ``run_dir:``, else ``runs/<recipe name>``; ``ckpt`` is one checkpoint folder to
    take weights from first; ``ema=False`` loads the raw weights instead of the EMA copy;
    ``precision`` (fp32, bf16, fp16, or auto: bf16 where the device computes it natively) runs the
    denoiser under autocast.
    """
    if registry is None:
        from .discovery import get_plugins

        registry = get_plugins().registry
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    check(recipe, registry)
    if precision not in PRECISIONS:
        raise UsageError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
    roles = resolve_roles(recipe, registry)
    audio = audio_config(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # components built the same way every time (then weights load)
        built = {role: build(recipe.components[name], component_kind(recipe, name, registry), registry,
                             where=f"components.{name}", audio=audio)
                 for role, name in roles.items()}
    autoencoder = built["autoencoder"]
    if getattr(autoencoder, "domain", None) not in ("mel", "waveform"):
        raise TtaError(f"autoencoder '{roles['autoencoder']}' has domain {getattr(autoencoder, 'domain', None)!r}; "
                       "expected 'mel' or 'waveform'")
    if autoencoder.domain == "mel" and "vocoder" not in built:
        raise UsageError(f"autoencoder '{roles['autoencoder']}' decodes to mel, and the recipe has no vocoder "
                         "in components: to turn mel into audio")
    from .data.audio import channels_problem

    problem = channels_problem(autoencoder, audio.channels)
    if problem:
        raise UsageError(problem)
    if autoencoder.domain == "waveform":
        built.pop("vocoder", None)
        roles.pop("vocoder", None)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    named = {roles[role]: c for role, c in built.items()}
    weights = load_weights_for(named, recipe, run_dir, ckpt=ckpt, ema=ema)
    dev = pick_device(device)
    for component in built.values():
        if isinstance(component, torch.nn.Module):
            component.to(dev).eval().requires_grad_(False)
    return Pipeline(recipe=recipe, conditioner=built["conditioner"], denoiser=built["denoiser"],
                    process=built["process"], autoencoder=autoencoder, vocoder=built.get("vocoder"),
                    roles=roles, audio=audio, registry=registry, device=dev, precision=precision,
                    weights=weights)
