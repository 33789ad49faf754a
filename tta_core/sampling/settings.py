"""What decides a generation: :class:`SampleSettings`, resolved from the options given, the
recipe's ``sample:`` section and the defaults; and the errors that name those options.

Errors name each option as the Python argument (``strength``); a front end that spells
options otherwise (``tta-run sample``: ``--strength``) re-spells them with
:meth:`NamesOptions.respelled`, so the wording of a check lives with the check.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..diffusion.guidance import Guidance
from ..errors import RecipeError, TtaError, UsageError
from ..recipe import Recipe

if TYPE_CHECKING:
    from .editing import AudioPrompt, InitAudio
    from .pipeline import Pipeline

#: How an option reads from Python where it is not simply its argument name.
PYTHON_SPELLING = {"skip_memory_check": "memory_check=False"}


class _Spelling(dict):
    def __init__(self, spell: Callable[[str], str]):
        super().__init__()
        self.spell = spell

    def __missing__(self, key: str) -> str:
        return self.spell(key)


def _python(name: str) -> str:
    return PYTHON_SPELLING.get(name, name)


class NamesOptions(TtaError):
    """An error whose text names options as ``{name}`` placeholders (literal braces
    doubled): ``str()`` gives the Python argument names, :meth:`respelled` another spelling."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(template.format_map(_Spelling(_python)))

    def respelled(self, spell: Callable[[str], str]) -> "NamesOptions":
        """The same error, its options named by ``spell(name)`` (e.g. ``--strength``)."""
        other = type(self).__new__(type(self))  # not copy.copy: that would format the spelled text again
        other.__dict__.update(self.__dict__)
        other.args = (self.template.format_map(_Spelling(spell)),)
        return other


class SettingError(NamesOptions, UsageError):
    """A sampling option that cannot be used (exit 2)."""


# -- the recipe's audio section ------------------------------------------------------------------


def audio_config(recipe: Recipe) -> Any:
    """The recipe's ``audio:`` section as the data layer's validated ``AudioConfig`` (the
    value factories get as ``audio=``, as in training): ``recipe.audio``."""
    return recipe.audio


def check_duration(audio: Any, seconds: float) -> float:
    """``seconds`` when an output of that length can be made and pictured: finite, and longer
    than one STFT window of the recipe's audio; else a SettingError saying the shortest."""
    shortest = (audio.mel.n_fft + 1) / audio.sample_rate
    try:  # the data layer's rule for any example length (AudioConfig.with_duration)
        fits = math.isfinite(seconds) and audio.with_duration(seconds) is not None
    except RecipeError:
        fits = False
    if not fits:
        raise SettingError(f"{{duration}} {seconds:g} s is too short: an output must be longer than one STFT window "
                           f"of the recipe's audio ({audio.mel.n_fft} samples at {audio.sample_rate} Hz), "
                           f"at least {shortest:.3g} s")
    return float(seconds)


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides a generation, resolved (see :func:`resolve_settings`)."""

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


def sampler_node(defaults: Mapping[str, Any], spec: str | Mapping | None, registry: Any) -> dict:
    """The sampler's ``{type: ...}`` node: ``spec`` as a name (keeping the recipe's options
    when it names the recipe's sampler) or a node, else the recipe's ``sample.sampler``."""
    node = dict(defaults.get("sampler") or {})
    if isinstance(spec, str):
        node = node if node.get("type") == spec else {"type": spec}
    elif spec is not None:
        node = dict(spec)
    if not node:
        raise SettingError("no sampler: the recipe's sample: section names none. Set sample.sampler in the "
                           "recipe (sample: {{sampler: {{type: NAME}}}}) or give {sampler}; registered samplers: "
                           + (", ".join(registry.names("sampler")) or "none"))
    if not registry.has("sampler", node.get("type")):
        raise UsageError(registry.unknown_message("sampler", str(node.get("type"))))
    return node


def _guidance(pick: Callable[[Any, str, Any], Any], scale: Any, rescale: Any, interval: Any) -> Guidance:
    try:
        band = pick(interval, "guidance_interval", None)
        if band is not None:
            lo, hi = (float(v) for v in band)
            band = (lo, hi)
        return Guidance(scale=float(pick(scale, "guidance", 1.0)), rescale=float(pick(rescale, "guidance_rescale", 0.0)),
                        interval=band)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _audio_inputs(pipe: "Pipeline", init_audio: Any, strength: Any, keep: Any, extend: Any, duration: Any,
                  audio_prompt: Any) -> tuple["InitAudio | None", "AudioPrompt | None", Any]:
    """The init clip and the audio prompt, loaded and checked; the duration the init implies."""
    from .editing import AudioPrompt, load_audio, load_init

    init, prompt = None, None
    if init_audio is not None:
        init, duration = load_init(pipe.audio, init_audio, strength, keep, extend, duration)
    elif strength is not None or keep or extend is not None:
        raise SettingError("{strength}, {keep} and {extend} act on an init clip: give {init_audio} (an audio file)")
    if audio_prompt is not None:
        if not callable(getattr(pipe.conditioner, "encode_audio", None)):
            raise SettingError(f"{{audio_prompt}}: the conditioner '{pipe.roles['conditioner']}' has no audio side "
                               "(only conditioners with encode_audio, such as CLAP in recipes/audioldm_clap.yaml, "
                               "take audio prompts)")
        prompt = AudioPrompt(str(audio_prompt), load_audio(pipe.audio, audio_prompt, channels=1))
    return init, prompt, duration


def resolve_settings(pipe: "Pipeline", *, steps: int | None = None, guidance: float | None = None,
                     guidance_rescale: float | None = None, guidance_interval: Sequence[float] | None = None,
                     sampler: str | Mapping | None = None, seed: int | None = None, duration: float | None = None,
                     batch_size: int | None = None, negative: str | Sequence[str] | None = None,
                     decode_steps: int | None = None, init_audio: str | os.PathLike | None = None,
                     strength: float | None = None, keep: str | Sequence[Sequence[float]] | None = None,
                     extend: float | None = None, audio_prompt: str | os.PathLike | None = None,
                     loudness: float | None = None) -> SampleSettings:
    """Options given here, else the recipe's ``sample:`` values, else the defaults (50 steps,
    guidance 1, seed 0, the audio duration, batches of 8; a diffusion autoencoder's own
    ``decode_steps``). The sampler has no default: the recipe's ``sample.sampler`` or ``sampler``.

    Audio-guided generation (tta_core.diffusion.editing): ``init_audio`` (a file) with
    ``strength`` (0 keeps it, 1 ignores it; SDEdit) and/or ``keep`` (spans in seconds,
    "0:1.5,3:4", regenerated around; inpainting), or ``extend`` (seconds to continue it
    by). The output is as long as the init audio (plus ``extend``) unless ``duration`` is
    given. ``audio_prompt`` (a file) conditions on its audio embedding instead of text,
    for conditioners with an audio side (CLAP). ``loudness``: each output normalised to
    this integrated loudness in LUFS (tta_core.loudness), with a true-peak ceiling.
    """
    d = pipe.defaults
    init, prompt, duration = _audio_inputs(pipe, init_audio, strength, keep, extend, duration, audio_prompt)
    if loudness is not None and not -70.0 <= float(loudness) <= 0.0:
        raise SettingError(f"{{loudness}} is a target in LUFS between -70 and 0 (e.g. -14, -23), got {loudness}")

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else d.get(key, default)

    out = SampleSettings(
        steps=int(pick(steps, "steps", 50)),
        guidance=_guidance(pick, guidance, guidance_rescale, guidance_interval),
        sampler=sampler_node(d, sampler, pipe.registry),
        seed=int(pick(seed, "seed", 0)),
        duration=float(pick(duration, "duration", pipe.audio.duration)),
        batch_size=int(pick(batch_size, "batch_size", 8)),
        negative=pick(negative, "negative", None),
        decode_steps=pick(decode_steps, "decode_steps", None),
        init=init, audio_prompt=prompt,
        loudness=None if loudness is None else float(loudness),
    )
    if out.steps < 1 or out.batch_size < 1:
        raise SettingError("{steps} and {batch_size} must be at least 1")
    check_duration(pipe.audio, out.duration)
    if out.decode_steps is not None:
        if not takes(pipe.autoencoder.decode, "steps"):
            raise SettingError(f"{{decode_steps}}: the autoencoder '{pipe.roles['autoencoder']}' decodes in one "
                               "pass (only diffusion autoencoders, whose decode takes steps, do)")
        if int(out.decode_steps) < 1:
            raise SettingError(f"{{decode_steps}} must be at least 1, got {out.decode_steps}")
    return out


def per_text(value: str | Sequence[str] | None, count: int) -> list[str]:
    """One negative prompt per text ("" for none)."""
    if value is None or isinstance(value, str):
        return [value or ""] * count
    value = [v or "" for v in value]
    if len(value) != count:
        raise SettingError(f"got {len(value)} {{negative}} prompts for {count} prompts")
    return value


def takes(fn: Any, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

