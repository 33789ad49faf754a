"""Audio settings, loading rules and the AudioLDM / HiFi-GAN log-mel."""

import dataclasses
import typing

import numpy as np
import pytest
import torch

from audio_fixtures import bad_files, tone, write_wav
from tta_core.data.audio import BadAudio, fit, load_clip, pick_offset
from tta_core.data.config import AudioConfig, MelConfig
from tta_core.data.mel import LogMel, mel_filterbank
from tta_core.errors import RecipeError
from tta_core.recipe import SECTIONS


def reference_log_mel(wave: np.ndarray, sr=16000, n_fft=1024, hop=160, win=1024, n_mels=64, fmin=0, fmax=8000):
    """HiFi-GAN's mel_spectrogram in plain numpy + librosa's filterbank: [T, n_mels]."""
    import librosa

    pad = (n_fft - hop) // 2
    x = np.pad(wave.astype(np.float64), (pad, pad), mode="reflect")
    window = np.zeros(n_fft)
    off = (n_fft - win) // 2
    window[off:off + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    frames = np.stack([x[i * hop:i * hop + n_fft] * window for i in range((len(x) - n_fft) // hop + 1)])
    mag = np.abs(np.fft.rfft(frames, axis=1))
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)
    return np.log(np.maximum(mag @ fb.T, 1e-5))


def test_log_mel_matches_hifigan_reference_to_1e4():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (200 + 3000 * t) * t)
            + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    wave[8000:11000] = 0  # a silent stretch, where the 1e-5 floor applies
    audio = AudioConfig(duration=1.0)
    ref = reference_log_mel(wave)
    mel = LogMel(audio)
    out64 = mel(torch.from_numpy(wave).double()[None])
    out32 = mel(torch.from_numpy(wave)[None])
    assert out64.shape == out32.shape == (1, 1, 100, 64)  # 16 kHz, hop 160: 100 frames per second
    assert np.abs(out64[0, 0].numpy() - ref).max() < 1e-4
    assert np.abs(out32[0, 0].numpy() - ref).max() < 1e-4
    assert ref.min() == pytest.approx(np.log(1e-5))  # the floor was exercised


def test_log_mel_other_settings_and_batching():
    audio = AudioConfig(sample_rate=22050, duration=1.0, mel=MelConfig(n_fft=2048, hop=256, win=1024, n_mels=80, fmax=11025))
    waves = np.stack([tone(1.0, sr=22050, freq=f, seed=i) for i, f in enumerate((220, 1000, 5000))])
    out = LogMel(audio)(torch.from_numpy(waves))
    assert out.shape == (3, 1, audio.num_frames, 80)
    for i in range(3):  # batched equals one at a time equals the reference
        ref = reference_log_mel(waves[i], 22050, 2048, 256, 1024, 80, 0, 11025)
        assert np.abs(out[i, 0].numpy() - ref).max() < 1e-4


def test_filterbank_is_librosas_slaney():
    import librosa

    fb = mel_filterbank(AudioConfig())
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000)
    assert fb.shape == (64, 513)
    assert np.abs(fb.numpy() - ref).max() < 1e-6


def test_audio_config_from_recipe_mapping_is_strict():
    cfg = AudioConfig.from_mapping({"sample_rate": 16000, "duration": 2, "normalize": True, "mel": {"n_mels": 80}})
    assert cfg.duration == 2.0 and cfg.mel.n_mels == 80 and cfg.mel.hop == 160 and cfg.normalize
    assert cfg.num_samples == 32000 and cfg.num_frames == 200
    with pytest.raises(RecipeError) as err:
        AudioConfig.from_mapping({"sample_rte": 16000, "duration": "long", "mel": {"n_fft": 512, "hopp": 100}})
    text = str(err.value)
    assert "unknown key 'sample_rte' in 'audio'; did you mean 'sample_rate'?" in text
    assert "'audio.duration' expects float" in text
    assert "unknown key 'hopp' in 'audio.mel'; did you mean 'hop'?" in text
    with pytest.raises(RecipeError, match="fmax <= sample_rate/2 = 4000"):
        AudioConfig.from_mapping({"sample_rate": 8000})


def test_recipe_schema_lists_exactly_the_audio_config_fields():
    spec = SECTIONS["audio"]
    assert set(spec) == {f.name for f in dataclasses.fields(AudioConfig)}
    assert set(spec["mel"]) == {f.name for f in dataclasses.fields(MelConfig)}
    assert typing.get_args(spec["on_bad_item"]) == ("skip", "fail")


def test_recipe_validation_reports_bad_audio_keys(tmp_path):
    from tta_core.recipe import load_recipe, validate
    from tta_core.registry import Registry

    path = tmp_path / "r.yaml"
    path.write_text("audio:\n  sample_rate: 16000\n  on_bad_item: ignore\n  mel: {hop: 160, nmels: 64}\n")
    issues = [str(i) for i in validate(load_recipe(path), Registry())]
    assert any("on_bad_item" in i and "'skip', 'fail'" in i for i in issues)
    assert any("unknown key 'nmels' in 'audio.mel'; did you mean 'n_mels'?" in i for i in issues)


def test_load_mixes_resamples_and_normalises(tmp_path):
    audio = AudioConfig(duration=1.0)
    stereo = tone(0.5, sr=16000, channels=2)
    clip = load_clip(write_wav(tmp_path / "st.wav", stereo, subtype="FLOAT"), audio)
    assert clip.fixes == ("mixed_to_mono",)
    assert np.allclose(clip.wave.numpy(), stereo.mean(axis=1), atol=1e-6)

    clip = load_clip(write_wav(tmp_path / "r.flac", tone(0.5, sr=44100), sr=44100), audio)
    assert clip.fixes == ("resampled",) and clip.wave.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(clip.wave.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) < 3  # still a 440 Hz tone

    ogg = load_clip(write_wav(tmp_path / "x.ogg", tone(0.5)), audio)
    assert ogg.wave.shape == (8000,)

    norm = load_clip(tmp_path / "st.wav", AudioConfig(duration=1.0, normalize=True)).wave
    assert abs(float(norm.mean())) < 1e-6 and float(norm.abs().max()) == pytest.approx(0.5, abs=1e-5)


def test_fit_crops_randomly_in_training_and_from_the_start_in_evaluation():
    audio = AudioConfig(duration=0.5)
    wave = torch.arange(16000, dtype=torch.float32)
    assert torch.equal(fit(wave, audio, pick_offset(16000, audio, None)), wave[:8000])
    offsets = {pick_offset(16000, audio, np.random.default_rng(s)) for s in range(20)}
    assert len(offsets) > 5 and max(offsets) <= 50  # hop-aligned: (16000 - 8000) / 160 = 50
    k = max(offsets)
    assert torch.equal(fit(wave, audio, k), wave[k * 160:k * 160 + 8000])
    short = fit(wave[:3000], audio, 0)
    assert short.shape == (8000,) and torch.equal(short[:3000], wave[:3000]) and not short[3000:].any()


@pytest.mark.parametrize("case", ["unreadable", "unreadable_0b", "empty", "too_short", "non_finite", "non_finite_inf"])
def test_each_bad_file_is_refused_with_its_reason(tmp_path, case):
    path = bad_files(tmp_path)[case]
    with pytest.raises(BadAudio) as err:
        load_clip(path, AudioConfig(duration=1.0, min_duration=0.25))
    assert err.value.reason == case.removesuffix("_0b").removesuffix("_inf")
    assert str(path) in str(err.value)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(BadAudio) as err:
        load_clip(fifo, AudioConfig(duration=1.0))
    assert err.value.reason == "missing_file"
