"""The recipe's ``audio:`` section as one frozen value: every loading and mel decision reads it.

Defaults are AudioLDM's 16 kHz / 64-band setting, so a pretrained AudioLDM or HiFi-GAN
16 kHz vocoder fits the mels this produces::

    audio:
      sample_rate: 16000      # every clip is resampled to this
      duration: 10.24         # seconds per example: longer clips are cropped, shorter padded
      min_duration: 0.25      # shorter clips are skipped (reason too_short), not padded
      normalize: false        # AudioLDM's waveform normalisation (zero mean, peak 0.5)
      on_bad_item: skip       # skip | fail: what a bad file or manifest row does
      mel: {n_fft: 1024, hop: 160, win: 1024, n_mels: 64, fmin: 0, fmax: 8000}

These dataclasses are the ``audio:`` schema: the recipe validator reads its keys, types and
ranges (``Annotated[..., Range(...)]``) from their fields (tta_core.recipe.fields_spec).
Imports nothing heavy: the CLI and the recipe validator use it before torch is needed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

from ..errors import RecipeError, closest
from ..recipe import Positive, Range, RecipeIssue

_AtLeast1 = Annotated[int, Range(min=1)]
_NonNegative = Annotated[float, Range(min=0)]

#: The floor under mel energies before the log, as in HiFi-GAN's ``spectral_normalize``;
#: log(1e-5) = -11.51 is the value silence (and padding) takes.
LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelConfig:
    """Magnitude-STFT log-mel settings (HiFi-GAN's ``mel_spectrogram``)."""

    n_fft: _AtLeast1 = 1024
    hop: _AtLeast1 = 160  # 10 ms at 16 kHz: 100 frames per second
    win: _AtLeast1 = 1024
    n_mels: _AtLeast1 = 64
    fmin: _NonNegative = 0.0
    fmax: Positive = 8000.0

    @property
    def pad(self) -> int:
        """Reflect padding on each side; with center=False it makes frames = samples // hop."""
        return (self.n_fft - self.hop) // 2


@dataclass(frozen=True)
class AudioConfig:
    """How audio is loaded, fitted to length and turned into a log-mel.

    ``num_samples`` = duration * sample_rate samples per example, ``num_frames`` mel frames
    of ``mel.n_mels`` bins each: a training example is a wave [N] and a mel [1, T, F].
    ``channels`` > 1 (stereo: 2) keeps that many channels in the wave, [C, N], for waveform
    autoencoders; mels are always of the mono mix.
    """

    sample_rate: _AtLeast1 = 16000
    duration: Positive = 10.24
    min_duration: _NonNegative = 0.25
    normalize: bool = False
    on_bad_item: Literal["skip", "fail"] = "skip"
    channels: _AtLeast1 = 1
    mel: MelConfig = field(default_factory=MelConfig)

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))

    @property
    def num_frames(self) -> int:
        return self.frames_for(self.num_samples)

    def frames_for(self, n_samples: int) -> int:
        """Mel frames of a wave of ``n_samples`` samples."""
        m = self.mel
        return (n_samples + 2 * m.pad - m.n_fft) // m.hop + 1

    def with_duration(self, seconds: float, where: str = "duration") -> "AudioConfig":
        """These settings with examples of ``seconds`` each (a stage's own crop length);
        ``min_duration`` is lowered to it where it was longer. Raises RecipeError when the
        length cannot work (e.g. shorter than one STFT window)."""
        cfg = dataclasses.replace(self, duration=float(seconds), min_duration=min(self.min_duration, float(seconds)))
        problems = cfg._problems()
        if problems:
            raise RecipeError([RecipeIssue(None, f"{where}: {p}") for p in problems])
        return cfg

    def cache_settings(self) -> dict:
        """Everything that changes a cached mel's values; the cache key is their digest.
        (``on_bad_item`` decides what happens to a bad file, not what a good one holds.)"""
        data = dataclasses.asdict(self)
        data.pop("on_bad_item")
        if self.channels == 1:  # mono caches keep the keys they had before channels existed
            data.pop("channels")
        return data

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> "AudioConfig":
        """Build from a recipe's ``audio:`` mapping. Unknown keys and impossible values are
        errors (all reported at once), never silently ignored."""
        mapping = dict(mapping or {})
        problems: list[str] = []
        mel_map = mapping.pop("mel", None) or {}
        if not isinstance(mel_map, Mapping):
            problems.append(f"audio.mel must be a mapping, got {mel_map!r}")
            mel_map = {}
        top = _take(cls, mapping, "audio", problems, skip={"mel"})
        mel = MelConfig(**_take(MelConfig, dict(mel_map), "audio.mel", problems))
        cfg = cls(**top, mel=mel) if not problems else cls()
        if not problems:
            problems += cfg._problems()
        if problems:
            raise RecipeError([RecipeIssue(None, p) for p in problems])
        return cfg

    def _problems(self) -> list[str]:
        m, out = self.mel, []
        if self.sample_rate <= 0 or self.duration <= 0:
            out.append(f"audio: sample_rate and duration must be positive, got {self.sample_rate} and {self.duration}")
        elif self.num_samples <= m.n_fft:
            out.append(f"audio.duration {self.duration} s is shorter than one STFT window ({m.n_fft} samples)")
        if self.min_duration < 0 or self.min_duration > self.duration:
            out.append(f"audio.min_duration must lie in [0, duration={self.duration}], got {self.min_duration}")
        if not isinstance(self.channels, int) or self.channels < 1:
            out.append(f"audio.channels must be a positive whole number (1 mono, 2 stereo), got {self.channels!r}")
        if self.on_bad_item not in ("skip", "fail"):
            out.append(f"audio.on_bad_item is 'skip' or 'fail', got {self.on_bad_item!r}")
        if not (0 < m.hop <= m.win <= m.n_fft):
            out.append(f"audio.mel needs 0 < hop <= win <= n_fft, got hop {m.hop}, win {m.win}, n_fft {m.n_fft}")
        if m.n_mels <= 0:
            out.append(f"audio.mel.n_mels must be positive, got {m.n_mels}")
        if not (0 <= m.fmin < m.fmax <= self.sample_rate / 2):
            out.append(f"audio.mel needs 0 <= fmin < fmax <= sample_rate/2 = {self.sample_rate / 2:g}, "
                       f"got fmin {m.fmin}, fmax {m.fmax}")
        return out


_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _take(cls, mapping: dict, where: str, problems: list[str], skip=frozenset()) -> dict:
    """The fields of dataclass ``cls`` found in ``mapping``, type-checked; records problems."""
    hints = typing.get_type_hints(cls)  # Annotated[int, Range(...)] -> int
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    out = {}
    for key, value in mapping.items():
        if key not in fields:
            hint = closest(str(key), fields)
            problems.append(f"unknown key '{key}' in '{where}'" + (f"; did you mean '{hint}'?" if hint else "")
                            + f" Keys: {', '.join([*fields, *skip])}.")
            continue
        ann = hints[key] if hints[key] in _TYPES else str
        ok = isinstance(value, _TYPES[ann]) and (ann is bool or not isinstance(value, bool))
        if not ok:
            problems.append(f"'{where}.{key}' expects {ann.__name__}, got {value!r}")
            continue
        out[key] = float(value) if ann is float else value
    return out
