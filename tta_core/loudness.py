"""Loudness normalisation: one gain to a target integrated loudness, under a true-peak ceiling.

Integrated loudness is ITU-R BS.1770-4's, as ``pyloudnorm`` measures it: K-weighting, 400 ms
blocks with 75 % overlap, the -70 LUFS absolute gate and the -10 LU relative gate; channels
weighted 1, 1, 1, 1.41, 1.41 (L, R, C, Ls, Rs; at most 5). A clip shorter than one 400 ms
block has no loudness, and one with no block above -70 LUFS (digital silence, or nearly)
measures -inf: both are a ValueError, which callers turn into a per-file note.

True peak is estimated as BS.1770-4 Annex 2 does, by 4x oversampling, here with
``torchaudio.functional.resample`` (Hann-windowed sinc, lowpass_filter_width 6, rolloff 0.99)
instead of the Annex's 48-tap filter, and never below the sample peak. Inter-sample peaks of
a clip at full scale can pass 0 dBFS by a few dB (a sine at fs/4 sampled at 45 degrees reads
3 dB under its true peak), which is why the ceiling is in dBTP and not in sample values.

Nothing is ever clipped or compressed: the output is the input times one constant. When the
gain that reaches the target would put the true peak over the ceiling, the gain is lowered
until it does not, and the record says so and by how much the target was missed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import TtaError

#: BS.1770's gating block, seconds: the shortest clip that has an integrated loudness.
BLOCK_SECONDS = 0.4
#: How many times the gain is corrected by re-measuring: the -70 LUFS absolute gate is not
#: scale-invariant, so a gain can let quiet blocks in (or out) and move the measurement.
_ROUNDS = 4


def _pyloudnorm() -> Any:
    try:
        import pyloudnorm
    except ImportError:
        raise TtaError("loudness normalisation needs pyloudnorm (ITU-R BS.1770-4 loudness): "
                       "pip install pyloudnorm") from None
    return pyloudnorm


def _as_channels(wave: torch.Tensor) -> torch.Tensor:
    """[N] or [C, N] float to [C, N]; the wrong shapes and values are a ValueError."""
    if wave.dim() not in (1, 2):
        raise ValueError(f"loudness: the wave must be [N] or [C, N], got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"loudness: the wave must be float samples in [-1, 1], got {wave.dtype}")
    x = wave if wave.dim() == 2 else wave[None]
    if x.shape[0] > 5:
        raise ValueError(f"loudness: BS.1770 weights at most 5 channels (L, R, C, Ls, Rs), got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("loudness: the wave has NaN or Inf samples")
    return x


def integrated_loudness(wave: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness in LUFS of ``wave`` [N] or [C, N] (float, full scale 1.0) at
    ``sample_rate`` Hz, as pyloudnorm's BS.1770-4 meter measures it. ValueError if the clip is
    shorter than one 400 ms block, or silent (no block above the -70 LUFS gate)."""
    x = _as_channels(wave)
    need = math.ceil(BLOCK_SECONDS * sample_rate)
    if x.shape[-1] < need:
        raise ValueError(f"loudness: the clip is {x.shape[-1] / sample_rate * 1000:.0f} ms long; BS.1770 needs at "
                         f"least one 400 ms gating block ({need} samples at {sample_rate} Hz)")
    meter = _pyloudnorm().Meter(sample_rate)  # BS.1770-4: K-weighting, 400 ms blocks
    data = x.detach().to("cpu", torch.float64).numpy().T  # pyloudnorm takes channels as columns
    lufs = float(meter.integrated_loudness(data if data.shape[1] > 1 else data[:, 0]))
    if not math.isfinite(lufs):
        raise ValueError("loudness: the clip is silent (no 400 ms block above BS.1770's -70 LUFS absolute "
                         "gate), so it has no integrated loudness to normalise")
    return lufs


def true_peak(wave: torch.Tensor, sample_rate: int) -> float:
    """The true peak of ``wave`` [N] or [C, N] in dBTP (dB relative to full scale 1.0), over all
    channels: the largest magnitude of the 4x-oversampled signal (torchaudio's resample up to
    4 * sample_rate) or of the samples themselves, whichever is larger. -inf for silence."""
    import torchaudio.functional as AF

    x = _as_channels(wave).detach().to("cpu", torch.float32)
    up = AF.resample(x, sample_rate, 4 * sample_rate)
    peak = max(float(up.abs().max()), float(x.abs().max()))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def normalize_loudness(wave: torch.Tensor, sample_rate: int, target_lufs: float,
                       true_peak_dbtp: float = -1.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """``wave`` [N] or [C, N] (float, full scale 1.0; channels in rows) at ``sample_rate`` Hz,
    scaled by one gain to ``target_lufs`` integrated loudness (LUFS), the gain lowered where the
    4x-oversampled true peak would pass ``true_peak_dbtp`` (dBTP).

    Returns the scaled wave (same shape, dtype and device) and what was done, JSON-ready,
    rounded to 0.0001: ``target_lufs``, ``lufs_before``, ``gain_db`` (the gain applied),
    ``lufs_after`` (measured on the output), ``true_peak_dbtp`` (the output's),
    ``true_peak_ceiling_dbtp``, ``peak_limited`` (whether the ceiling lowered the gain) and
    ``shortfall_lu`` (target minus reached loudness when it did, else 0).

    ValueError for a clip shorter than 400 ms or silent (see :func:`integrated_loudness`);
    :class:`~tta_core.errors.TtaError` if pyloudnorm is not installed.
    """
    if not (math.isfinite(target_lufs) and math.isfinite(true_peak_dbtp)):
        raise ValueError(f"loudness: target_lufs and true_peak_dbtp must be finite, got {target_lufs}, "
                         f"{true_peak_dbtp}")
    before = integrated_loudness(wave, sample_rate)
    x = wave.detach().double()  # the gain search in double; the output keeps the input's dtype

    def scaled(gain_db: float) -> torch.Tensor:
        return x * 10.0 ** (gain_db / 20.0)

    gain_db = target_lufs - before
    after = integrated_loudness(scaled(gain_db), sample_rate)
    for _ in range(_ROUNDS):
        if abs(target_lufs - after) < 0.01:
            break
        gain_db += target_lufs - after
        after = integrated_loudness(scaled(gain_db), sample_rate)
    # a gain scales the oversampled signal as it does the samples: the peak moves by gain_db exactly
    peak_in = true_peak(x, sample_rate)
    limited = peak_in + gain_db > true_peak_dbtp
    if limited:
        gain_db = true_peak_dbtp - peak_in
        after = integrated_loudness(scaled(gain_db), sample_rate)
    out = wave * 10.0 ** (gain_db / 20.0)
    info = {
        "target_lufs": float(target_lufs),
        "lufs_before": before,
        "gain_db": gain_db,
        "lufs_after": after,
        "true_peak_dbtp": peak_in + gain_db,
        "true_peak_ceiling_dbtp": float(true_peak_dbtp),
        "peak_limited": bool(limited),
        "shortfall_lu": (target_lufs - after) if limited else 0.0,
    }
    return out, {k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()}
