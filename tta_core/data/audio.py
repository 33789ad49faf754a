"""Loading one audio file the way every part of tta sees it, and fitting it to length.

The rules, in the order they apply (``docs/data.md`` has the table):

- not a regular file (missing, a folder, a FIFO that would block forever) -> skip ``missing_file``
- libsndfile cannot decode it, or it has 0 bytes                         -> skip ``unreadable``
- it decodes to zero samples                                             -> skip ``empty``
- any NaN or Inf sample (float WAVs can hold them)                       -> skip ``non_finite``
- ``channels: 1`` (the default) and several channels                       -> mean to mono
- ``channels: C`` > 1: C channels are kept, a mono file is copied to each    (``mono_to_C``),
  any other count is mixed to mono, then copied                         (``mixed_to_mono``)
- another sample rate                                                    -> resample (torchaudio)
- shorter than ``min_duration`` after resampling                         -> skip ``too_short``
- ``normalize``: AudioLDM's ``x - mean; x / (max|x| + 1e-8) * 0.5`` over the whole clip
- shorter than ``duration``: zero-padded at the end; longer: cropped (:func:`fit`)

Normalisation applies to the whole clip before cropping (AudioLDM normalises the crop), so
that cached mels, computed once per clip, equal the ones computed on the fly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .config import AudioConfig


class BadAudio(Exception):
    """A file that the rules above skip; ``reason`` is the name reports count it under."""

    def __init__(self, reason: str, path: str | os.PathLike, detail: str = ""):
        self.reason, self.path, self.detail = reason, str(path), detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Clip:
    """A whole decoded clip. wave: float32 at the config's rate, finite; [N] when the config
    has one channel, [C, N] when it has C > 1. ``fixes`` names what was done to it
    (mixed_to_mono, mono_to_C, resampled)."""

    wave: torch.Tensor
    fixes: tuple[str, ...] = ()


def load_clip(path: str | os.PathLike, audio: AudioConfig) -> Clip:
    """Decode, check, mix, resample and (optionally) normalise one file; raises BadAudio."""
    path = Path(path)
    if not path.is_file():  # is_file() also refuses FIFOs and devices, which can block reads
        raise BadAudio("missing_file", path)
    if path.stat().st_size == 0:
        raise BadAudio("unreadable", path, "0 bytes")
    return decode_clip(str(path), audio, path)


def decode_clip(source: str | bytes, audio: AudioConfig, where: str | os.PathLike) -> Clip:
    """:func:`load_clip` for a file's path or its bytes (a member of a tar shard); ``where``
    names it in a BadAudio."""
    import io

    if isinstance(source, bytes) and not source:
        raise BadAudio("unreadable", where, "0 bytes")
    try:  # [N, channels]
        data, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32",
                             always_2d=True)
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError)
        raise BadAudio("unreadable", where, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    path = where
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise BadAudio("empty", path, "0 samples")
    if not np.isfinite(data).all():
        raise BadAudio("non_finite", path, f"{int((~np.isfinite(data)).sum())} NaN/Inf samples")
    fixes, want, have = [], audio.channels, data.shape[1]
    if want > 1 and have == want:
        wave = torch.from_numpy(np.ascontiguousarray(data.T))
    else:
        wave = torch.from_numpy(data.mean(axis=1) if have > 1 else data[:, 0].copy())
        if have > 1:
            fixes.append("mixed_to_mono")
        if want > 1:
            wave = wave[None].repeat(want, 1)
            fixes.append(f"mono_to_{want}")
    if rate != audio.sample_rate:
        import torchaudio.functional as AF

        wave = AF.resample(wave, int(rate), audio.sample_rate)
        fixes.append("resampled")
    n = wave.shape[-1]
    if n < audio.min_duration * audio.sample_rate or n == 0:
        raise BadAudio("too_short", path, f"{n / audio.sample_rate:.3f} s < min_duration {audio.min_duration} s")
    if audio.normalize:
        wave = normalize(wave)
    return Clip(wave.contiguous(), tuple(fixes))


def normalize(wave: torch.Tensor) -> torch.Tensor:
    """AudioLDM's waveform normalisation of a clip, [N] or [C, N]: each channel to zero
    mean, then the whole clip to peak 0.5 (one gain for all channels keeps the balance)."""
    wave = wave - wave.mean(dim=-1, keepdim=True)
    return wave / (wave.abs().amax() + 1e-8) * 0.5


def mono(wave: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """The mono mix of a clip or batch whose config has ``channels`` channels: [N] or [B, N]
    as they are (one channel); [C, N] -> [N] and [B, C, N] -> [B, N] (several)."""
    return wave.mean(dim=-2) if channels > 1 else wave


def with_channels(wave: torch.Tensor) -> torch.Tensor:
    """A batch of waves as a waveform autoencoder takes them: [B, N] -> [B, 1, N];
    [B, C, N] (several channels) as it is."""
    return wave[:, None] if wave.ndim == 2 else wave


def pad_to(wave: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad [..., N] at the end to at least ``n`` samples."""
    short = n - wave.shape[-1]
    return torch.nn.functional.pad(wave, (0, short)) if short > 0 else wave


def max_offset_frames(n_samples: int, audio: AudioConfig) -> int:
    """How many hops a crop of ``num_samples`` can start late in a clip of ``n_samples``.
    Crops start on a hop boundary, so a crop of the wave and of its mel stay aligned."""
    return max(0, (n_samples - audio.num_samples) // audio.mel.hop)


def pick_offset(n_samples: int, audio: AudioConfig, rng: np.random.Generator | None) -> int:
    """Crop start in frames: random in training (``rng`` given), 0 in evaluation."""
    top = max_offset_frames(n_samples, audio)
    return int(rng.integers(0, top + 1)) if rng is not None and top > 0 else 0


def fit(wave: torch.Tensor, audio: AudioConfig, offset_frames: int = 0) -> torch.Tensor:
    """[..., N_clip] -> [..., num_samples]: the crop starting ``offset_frames`` hops in, zero-padded."""
    start = offset_frames * audio.mel.hop
    return pad_to(wave[..., start:start + audio.num_samples], audio.num_samples)


def channels_problem(autoencoder, channels: int) -> str | None:
    """Why ``autoencoder`` cannot take ``channels``-channel audio (None when it can): mel
    autoencoders see the mono mix only; a waveform one takes its ``in_channels``."""
    domain = getattr(autoencoder, "domain", "mel")
    if channels > 1 and domain == "mel":
        return (f"audio.channels is {channels}, but the autoencoder works on mels (of the mono mix): "
                "several channels need a waveform autoencoder (diffae)")
    have = getattr(autoencoder, "in_channels", None)
    if domain == "waveform" and isinstance(have, int) and have != channels:
        return (f"the autoencoder takes {have}-channel audio but audio.channels is {channels}: "
                f"set audio.channels: {have} or the autoencoder's in_channels: {channels}")
    return None
