"""Loudness normalisation (tta_core.loudness) on synthetic clips, checked against pyloudnorm
called directly and a true-peak estimate made independently (scipy's polyphase resampler)."""

import math
import sys

import numpy as np
import pytest
import torch

from tta_core.errors import TtaError
from tta_core.loudness import integrated_loudness, normalize_loudness, true_peak

pyln = pytest.importorskip("pyloudnorm")
SR = 16000


def measured(wave: torch.Tensor, sr: int = SR) -> float:
    data = wave.double().numpy()
    return pyln.Meter(sr).integrated_loudness(data.T if data.ndim == 2 else data)


def independent_true_peak_db(wave: torch.Tensor) -> float:
    from scipy.signal import resample_poly

    data = np.atleast_2d(wave.double().numpy())
    return 20 * math.log10(max(np.abs(resample_poly(data, 4, 1, axis=-1)).max(), np.abs(data).max()))


def tone(freq: float, seconds: float, level: float, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (level * torch.sin(2 * math.pi * freq * t)).float()


def chirp(f0: float, f1: float, seconds: float, level: float, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    phase = 2 * math.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    return (level * torch.sin(phase)).float()


def noise_bursts(seconds: float, level: float, seed: int, sr: int = SR) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # uniform: a crest factor that -14 LUFS fits under -1 dBTP
    x = (torch.rand(int(seconds * sr), generator=g) * 2 - 1) * level
    gate = ((torch.arange(x.shape[0]) // (sr // 4)) % 2 == 0).float()  # 250 ms on, 250 ms off
    return x * gate


CLIPS = {
    "tone_quiet": lambda: tone(440, 2.0, 0.01),
    "tone_loud": lambda: tone(1000, 1.5, 0.7),
    "chirp": lambda: chirp(100, 6000, 3.0, 0.2),
    "noise_bursts": lambda: noise_bursts(2.0, 0.1, seed=0),
    "stereo_mixed": lambda: torch.stack([tone(220, 2.0, 0.3), noise_bursts(2.0, 0.02, seed=1)]),
    "stereo_chirps": lambda: torch.stack([chirp(200, 3000, 2.0, 0.05), chirp(3000, 200, 2.0, 0.5)]),
}


@pytest.mark.parametrize("target", [-30.0, -23.0, -14.0])
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_reaches_the_target_as_pyloudnorm_measures_it(name, target):
    wave = CLIPS[name]()
    out, info = normalize_loudness(wave, SR, target)
    assert out.shape == wave.shape and out.dtype == wave.dtype
    assert not info["peak_limited"] and info["shortfall_lu"] == 0.0
    assert abs(measured(out) - target) < 0.5 and abs(info["lufs_after"] - measured(out)) < 0.01
    assert info["lufs_before"] == pytest.approx(measured(wave), abs=1e-3)
    assert info["true_peak_dbtp"] <= -1.0 and independent_true_peak_db(out) <= -1.0 + 0.1
    # one gain: the output is the input times a constant, the recorded one
    nz = wave.abs() > 1e-4
    ratio = out[nz].double() / wave[nz].double()
    assert torch.allclose(ratio, torch.full_like(ratio, 10 ** (info["gain_db"] / 20)), rtol=1e-4)


def test_another_sample_rate():
    wave = torch.stack([chirp(50, 15000, 1.0, 0.3, sr=44100)] * 2)
    out, info = normalize_loudness(wave, 44100, -18.0)
    assert abs(measured(out, 44100) + 18.0) < 0.5


def test_the_true_peak_guard_lowers_the_gain_and_never_clips():
    clicks = torch.zeros(2 * SR)
    clicks[::SR // 8] = 0.5  # a sparse click train: high peaks, little loudness
    out, info = normalize_loudness(clicks, SR, -5.0)
    assert info["peak_limited"] and info["true_peak_dbtp"] == pytest.approx(-1.0, abs=1e-3)
    reached = measured(out)
    assert reached < -5.0 - 1.0 and info["shortfall_lu"] == pytest.approx(-5.0 - reached, abs=0.01)
    assert independent_true_peak_db(out) <= -1.0 + 0.1
    nz = clicks != 0
    assert torch.allclose(out[nz] / clicks[nz], torch.full((int(nz.sum()),), 10 ** (info["gain_db"] / 20)), rtol=1e-4)
    # a stricter ceiling limits further, and the same input below the ceiling is left unlimited
    _, strict = normalize_loudness(clicks, SR, -5.0, true_peak_dbtp=-6.0)
    assert strict["peak_limited"] and strict["gain_db"] == pytest.approx(info["gain_db"] - 5.0, abs=1e-3)
    _, quiet = normalize_loudness(clicks, SR, -50.0)
    assert not quiet["peak_limited"] and abs(quiet["lufs_after"] + 50.0) < 0.5


def test_the_true_peak_sees_between_the_samples():
    # a full-scale sine at a quarter of the rate, sampled 45 degrees off its crests: the samples
    # read 3 dB under the peak that a reconstruction filter (a DAC) gives
    t = torch.arange(SR, dtype=torch.float64) / SR
    wave = torch.sin(2 * math.pi * (SR / 4) * t + math.pi / 4).float()
    assert 20 * math.log10(float(wave.abs().max())) == pytest.approx(-3.01, abs=0.01)
    assert true_peak(wave, SR) == pytest.approx(0.0, abs=0.2)
    # it measures +0.26 LUFS: -0.5 LUFS puts its samples at -3.8 dBFS, but its true peak over -1 dBTP
    out, info = normalize_loudness(wave, SR, -0.5)
    assert 20 * math.log10(float(out.abs().max())) < -3.5
    assert info["peak_limited"] and independent_true_peak_db(out) <= -1.0 + 0.1


def test_a_quiet_passage_the_gain_lifts_over_the_absolute_gate_still_lands_on_target():
    # at -72 LUFS the second half is gated out before the gain; after +50 dB it counts
    wave = torch.cat([tone(1000, 1.5, 10 ** (-62 / 20)), tone(1000, 1.5, 10 ** (-69 / 20))])
    out, info = normalize_loudness(wave, SR, -14.0)
    assert abs(measured(out) + 14.0) < 0.05


def test_silent_and_too_short_clips_are_value_errors():
    with pytest.raises(ValueError, match="silent"):
        normalize_loudness(torch.zeros(SR), SR, -23.0)
    with pytest.raises(ValueError, match="silent"):  # below the -70 LUFS gate throughout
        normalize_loudness(noise_bursts(1.0, 1e-5, seed=2), SR, -23.0)
    with pytest.raises(ValueError, match=r"300 ms long; BS.1770 needs at least one 400 ms gating block \(6400 samples"):
        normalize_loudness(tone(440, 0.3, 0.5), SR, -23.0)
    normalize_loudness(tone(440, 0.4, 0.5), SR, -23.0)  # one block is enough
    with pytest.raises(ValueError, match=r"\[N\] or \[C, N\]"):
        normalize_loudness(torch.zeros(1, 2, SR), SR, -23.0)
    with pytest.raises(ValueError, match="at most 5 channels"):
        integrated_loudness(torch.randn(6, SR), SR)


def test_a_missing_pyloudnorm_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyloudnorm", None)
    with pytest.raises(TtaError, match="pip install pyloudnorm"):
        normalize_loudness(tone(440, 1.0, 0.5), SR, -23.0)
