"""Audio-guided generation: an init clip to vary (``strength``, SDEdit), to regenerate
around (``keep``, inpainting) or to continue (``extend``), and audio prompts.

The maths (masks, start rows, the inpainting denoiser) is :mod:`tta_core.diffusion.editing`;
this module fits the clip to the output and hands the sample loop an :class:`Edit`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UsageError
from .settings import SettingError

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .settings import SampleSettings

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


def load_audio(audio: Any, path: str | os.PathLike, channels: int | None = None) -> torch.Tensor:
    """A whole clip at the rate of ``audio`` (an AudioConfig): [N], or [C, N] with several channels."""
    from ..data.audio import BadAudio, load_clip

    if channels is not None:
        audio = dataclasses.replace(audio, channels=channels)
    try:
        return load_clip(path, dataclasses.replace(audio, min_duration=0.0, normalize=False)).wave
    except BadAudio as exc:
        raise UsageError(f"cannot use {path}: {exc}") from None


def load_init(audio: Any, path: str | os.PathLike, strength: float | None, keep: Any, extend: float | None,
              duration: float | None) -> tuple[InitAudio, float]:
    """The init clip fitted to the output (``duration``, else its own length plus ``extend``),
    and that duration."""
    from ..data.audio import pad_to
    from ..diffusion.editing import parse_spans, start_index

    wave = load_audio(audio, path)
    rate = audio.sample_rate
    spans = parse_spans(keep)
    if strength is not None:
        start_index(1, float(strength))  # checks the range
    if extend is not None:
        if float(extend) <= 0:
            raise SettingError(f"{{extend}} is a number of seconds to add, got {extend}")
        spans = [(0.0, wave.shape[-1] / rate), *spans]
        wave = pad_to(wave, wave.shape[-1] + int(round(float(extend) * rate)))
    if duration is None:
        duration = wave.shape[-1] / rate
    n = int(round(float(duration) * rate))
    wave = pad_to(wave[..., :n], n)
    if strength is None and not spans:
        raise SettingError("{init_audio} needs {strength} S (a variation) or {keep} START:END (inpainting)")
    return InitAudio(str(path), wave, None if strength is None else float(strength), tuple(spans),
                     None if extend is None else float(extend)), float(duration)


@dataclass(frozen=True)
class Crossfade:
    """The init clip at the output's rate and a weight per sample: 1 in the kept spans, 0
    elsewhere, linear ramps of KEEP_FADE seconds inside each span's edges."""

    wave: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def of(cls, init: InitAudio, audio_rate: int, rate: int) -> "Crossfade | None":
        if not init.keep:
            return None
        wave = init.wave.float()
        if rate != audio_rate:
            import torchaudio.functional as AF

            wave = AF.resample(wave, audio_rate, rate)
        n = wave.shape[-1]
        t = torch.arange(n, dtype=torch.float64) / rate
        weight = torch.zeros(n, dtype=torch.float64)
        for lo, hi in init.keep:
            rise = torch.ones(n, dtype=torch.float64) if lo <= 0 else ((t - lo) / KEEP_FADE).clamp(0, 1)
            fall = torch.ones(n, dtype=torch.float64) if hi * rate >= n else ((hi - t) / KEEP_FADE).clamp(0, 1)
            weight = torch.maximum(weight, torch.minimum(rise, fall))
        return cls(wave, weight.float())

    def apply(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave`` [B, ..., N] with the kept spans of the original crossfaded in (in place)."""
        n = min(wave.shape[-1], self.wave.shape[-1])
        w = self.weight[:n]
        wave[..., :n] = w * self.wave[..., :n] + (1 - w) * wave[..., :n]
        return wave


@dataclass(frozen=True)
class Edit:
    """What an init clip changes in the sample loop."""

    latent: torch.Tensor  # [1, ...] the init clip's latent, fitted to the output's latent length
    mask: torch.Tensor  # [1, ...] bool, True where the latent is kept
    start: int  # the schedule row to start from (SDEdit), 0 for pure inpainting
    crossfade: Crossfade | None  # the kept spans in the audio, None without kept spans

    def begin(self, denoise: Any, noise: torch.Tensor, schedule: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The denoiser, starting latent and schedule of an edited batch (``noise``: its unit
        noise, the eps that noises the kept parts and the init at every level)."""
        from ..diffusion import start_scale
        from ..diffusion.editing import inpainting_denoiser, noised

        z0 = self.latent.expand(noise.shape)
        if self.mask.any():
            denoise = inpainting_denoiser(denoise, z0, self.mask, noise)
        if self.start >= schedule.shape[0] - 1:  # strength 0: the init's own latent, no step to take
            return denoise, z0, schedule[-1:]
        if self.start > 0:  # SDEdit: the init's latent noised to the level the remaining steps start at
            level = schedule[self.start].to(noise.device)
            batch = noise.shape[0]
            return denoise, noised(z0, noise, level[0].expand(batch), level[1].expand(batch)), schedule[self.start:]
        return denoise, noise * start_scale(schedule), schedule

    def end(self, latent: torch.Tensor) -> torch.Tensor:
        """The sampled latent with the kept parts put back exactly."""
        return torch.where(self.mask, self.latent.expand(latent.shape), latent)


def plan_edit(pipe: "Pipeline", st: "SampleSettings", length: int) -> Edit:
    """The :class:`Edit` of ``st.init`` for outputs of ``length`` frames (or samples)."""
    from ..data.audio import with_channels
    from ..data.mel import log_mel
    from ..diffusion.editing import latent_mask, start_index

    init, ae = st.init, pipe.autoencoder
    shape = ae.latent_shape(length)
    with torch.no_grad():
        wave = init.wave[None].to(pipe.device).float()
        z0 = ae.encode(log_mel(wave, pipe.audio)) if ae.domain == "mel" else ae.encode(with_channels(wave))
    t = int(shape[1])  # the latent's time axis: crop or pad (with the latent of silence's edge) to it
    z0 = z0[:, :, :t]
    if z0.shape[2] < t:
        pad = z0[:, :, -1:].expand(*z0.shape[:2], t - z0.shape[2], *z0.shape[3:])
        z0 = torch.cat([z0, pad], dim=2)
    rate = (pipe.vocoder.sample_rate / pipe.vocoder.hop_length) if ae.domain == "mel" else pipe.audio.sample_rate
    mask = latent_mask(shape, init.keep, length, rate).to(pipe.device)
    start = start_index(st.steps, init.strength) if init.strength is not None else 0
    return Edit(z0.float(), mask, start, Crossfade.of(init, pipe.audio.sample_rate, pipe.sample_rate))

