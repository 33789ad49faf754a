"""The log-mel spectrogram exactly as AudioLDM and HiFi-GAN compute it, batched, any device.

    pad (n_fft - hop) / 2 samples on both sides, reflect      (HiFi-GAN's mel_spectrogram)
    |STFT|: Hann window of ``win``, ``n_fft`` bins, ``hop``, center=False
    Slaney-normalised Slaney-scale mel filterbank (librosa.filters.mel's default)
    log(clamp(mel, 1e-5))

so a vocoder trained on those mels (AudioLDM's HiFi-GAN, SpeechT5's) fits ours. With the
padding, a wave of N samples gives N // hop frames when hop divides N (160 per 10 ms at 16 kHz).
The magnitude is ``abs`` of the complex STFT as in AudioLDM's training code (HiFi-GAN adds
1e-9 under the square root, which only moves bins already under the 1e-5 floor).
"""

from __future__ import annotations

import torch

from .config import LOG_FLOOR, AudioConfig


def mel_filterbank(audio: AudioConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1]: the filterbank librosa.filters.mel(htk=False, norm='slaney') gives."""
    import torchaudio.functional as AF

    m = audio.mel
    fb = AF.melscale_fbanks(
        m.n_fft // 2 + 1, float(m.fmin), float(m.fmax), m.n_mels, audio.sample_rate,
        norm="slaney", mel_scale="slaney",
    )
    return fb.T.contiguous().to(dtype)


class LogMel(torch.nn.Module):
    """wave [B, N] (or [N]) -> log-mel [B, 1, T, n_mels], T = frames_for(N).

    A module so that ``.to(device)`` moves the window and filterbank with it; it computes in
    the input's dtype (float64 in, float64 out), which the parity tests use.
    """

    def __init__(self, audio: AudioConfig):
        super().__init__()
        self.audio = audio
        m = audio.mel
        self.register_buffer("window", torch.hann_window(m.win), persistent=False)
        self.register_buffer("fbank", mel_filterbank(audio), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        m = self.audio.mel
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2:
            raise ValueError(f"LogMel takes a wave [B, N] or [N], got shape {tuple(wave.shape)}")
        if wave.shape[-1] <= m.pad:
            raise ValueError(f"LogMel needs more than {m.pad} samples to reflect-pad, got {wave.shape[-1]}")
        x = torch.nn.functional.pad(wave[:, None], (m.pad, m.pad), mode="reflect")[:, 0]
        spec = torch.stft(
            x, m.n_fft, hop_length=m.hop, win_length=m.win, window=self.window.to(x.dtype),
            center=False, normalized=False, onesided=True, return_complex=True,
        ).abs()  # [B, n_fft/2+1, T]
        mel = torch.matmul(self.fbank.to(spec.dtype), spec)  # [B, n_mels, T]
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).transpose(1, 2)[:, None]


_cache: dict[AudioConfig, LogMel] = {}


def log_mel(wave: torch.Tensor, audio: AudioConfig) -> torch.Tensor:
    """Functional form of :class:`LogMel` (one module per config, kept for reuse)."""
    module = _cache.get(audio)
    if module is None:
        module = _cache[audio] = LogMel(audio)
    return module.to(wave.device)(wave)


def clip_mel(wave: torch.Tensor, audio: AudioConfig) -> torch.Tensor:
    """[N_clip] -> [T_clip, n_mels]: the mel of a whole clip, zero-padded to at least
    ``duration``. A crop starting ``k`` hops in is rows ``k : k + num_frames`` (what the mel
    cache stores, so cached and fresh examples are the same)."""
    from .audio import pad_to

    return log_mel(pad_to(wave, audio.num_samples)[None], audio)[0, 0]
