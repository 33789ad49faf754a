"""``mel_stats``: log-mel frames and their deltas, an embedder without weights.

What it is: every 10 ms frame of the project's log-mel (:class:`tta_core.data.mel.LogMel`,
AudioLDM / HiFi-GAN's mel) at 16 kHz, followed by its first-order deltas: D = 64 + 64 = 128,
one row per frame, ``embed(wave [B, N]) -> [B, N // 160, 128]``. The Fréchet distance
between two sets' frames then compares their spectral envelopes and how those move, a
coarse, model-free stand-in for FAD that runs anywhere, offline, with nothing to download.
It knows no classes and no text. Deterministic (no weights, no randomness).

Settings (fixed, so that numbers stay comparable across runs; all in ``settings()``):

- 16 kHz mono; the whole clip, no padding or cropping: frames = N // 160 (N > 432 samples);
- log-mel: reflect-pad 432 samples each side, |STFT| with a 1024-sample Hann window, n_fft
  1024, hop 160, center=False; 64 Slaney mel bands over 0-8000 Hz (librosa's default
  filterbank); ``log(clamp(mel, 1e-5))`` (natural log: silence is -11.51);
- deltas: ``torchaudio.functional.compute_deltas`` (the HTK regression formula over
  ``delta_win`` frames, 5 by default, edges repeated); the deltas of the log-mel, per frame.

Options: ``delta_win`` (odd, >= 3: the regression window of the deltas, in frames),
``device`` (where it computes; ``.to()`` works too).

Licence: nothing beyond the project's (it uses no third-party weights).
"""

from __future__ import annotations

import torch

from tta_core.plugin import AudioConfig, LogMel, MelConfig

from ._common import MONO, RESAMPLER, FrozenEmbedder, check_wave

#: The log-mel it embeds: AudioLDM's 16 kHz, 64-band setting (tta_core's defaults).
AUDIO = AudioConfig(sample_rate=16000, mel=MelConfig(n_fft=1024, hop=160, win=1024, n_mels=64, fmin=0.0, fmax=8000.0))


class MelStats(FrozenEmbedder):
    """wave [B, N] at 16 kHz -> [B, N // 160, 128]: log-mel frames, then their deltas."""

    name = "mel_stats"
    sample_rate = AUDIO.sample_rate
    dim = 2 * AUDIO.mel.n_mels

    def __init__(self, delta_win: int = 5, device: str = "cpu"):
        super().__init__()
        if isinstance(delta_win, bool) or not isinstance(delta_win, int) or delta_win < 3 or delta_win % 2 == 0:
            raise ValueError(f"mel_stats: delta_win is an odd number of frames >= 3, got {delta_win!r}")
        self.delta_win = delta_win
        self.mel = LogMel(AUDIO)
        self.freeze(device)

    def settings(self) -> dict:
        m = AUDIO.mel
        return {
            "embedder": self.name,
            "sample_rate": self.sample_rate,
            "channels": MONO,
            "window": f"whole clip, no padding or cropping: one row per {m.hop}-sample hop (N // {m.hop} frames)",
            "resampler": RESAMPLER,
            "log_mel": {"n_fft": m.n_fft, "win": m.win, "hop": m.hop, "n_mels": m.n_mels, "fmin": m.fmin,
                        "fmax": m.fmax, "stft": f"|STFT|, Hann, center=False after a reflect pad of {m.pad}",
                        "filterbank": "Slaney scale, Slaney norm", "log": "natural log of clamp(mel, 1e-5)"},
            "deltas": {"function": "torchaudio.functional.compute_deltas", "win_length": self.delta_win,
                       "mode": "replicate"},
            "layout": f"[log-mel ({m.n_mels}), deltas ({m.n_mels})] per frame",
            "weights": "none",
        }

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        import torchaudio.functional as AF

        wave = check_wave(self.name, wave, self.sample_rate, AUDIO.mel.pad + 1)
        mel = self.mel(self.as_input(wave))[:, 0]  # [B, T, 64]
        deltas = AF.compute_deltas(mel.transpose(1, 2), win_length=self.delta_win).transpose(1, 2)
        return torch.cat([mel, deltas], dim=-1)
