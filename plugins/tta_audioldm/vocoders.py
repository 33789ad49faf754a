"""Vocoders: log-mel [B, 1, T, F] -> wave [B, T * hop].

``griffin_lim`` needs no weights: the mel is mapped back to a linear magnitude through the
pseudo-inverse of the recipe's own mel filterbank, then phase is recovered by Griffin-Lim
(torchaudio) with the recipe's STFT settings. ``hifigan`` is AudioLDM's 16 kHz / 64-band
HiFi-GAN (transformers' SpeechT5HifiGan), loaded from a local folder.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from tta_core.plugin import TtaError


class GriffinLim(torch.nn.Module):
    def __init__(self, n_iter: int = 32, momentum: float = 0.99, audio=None):
        super().__init__()
        from tta_core.plugin import AudioConfig, mel_filterbank

        self.audio = audio if audio is not None else AudioConfig()
        m = self.audio.mel
        self.sample_rate, self.hop_length = self.audio.sample_rate, m.hop
        self.n_iter, self.momentum = n_iter, momentum
        fb = mel_filterbank(self.audio, torch.float64)  # [n_mels, n_freq]
        self.register_buffer("inverse", torch.linalg.pinv(fb).float(), persistent=False)  # [n_freq, n_mels]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        import torchaudio.functional as AF

        m = self.audio.mel
        frames = mel.shape[2]
        power = torch.exp(mel[:, 0].float()).transpose(1, 2)  # [B, n_mels, T]
        magnitude = torch.clamp(self.inverse.to(power.device) @ power, min=0.0)  # [B, n_freq, T]
        # torchaudio frames centred STFTs: T * hop samples have T + 1 frames; repeat the last
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
        window = torch.hann_window(m.win, device=mel.device)
        wave = AF.griffinlim(
            magnitude, window, m.n_fft, m.hop, m.win, power=1.0, n_iter=self.n_iter,
            momentum=self.momentum, length=frames * m.hop, rand_init=False,
        )
        return wave


#: AudioLDM's vocoder configuration (16 kHz, 64 mel bands, 160x upsampling).
AUDIOLDM_HIFIGAN = dict(
    model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
    upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    normalize_before=False,
)
#: AudioLDM's pipelines on the hub, whose ``vocoder/`` is that HiFi-GAN, for ``random_weights``.
HIFIGAN_CONFIGS = {name: AUDIOLDM_HIFIGAN for name in (
    "cvssp/audioldm", "cvssp/audioldm-s-full", "cvssp/audioldm-s-full-v2", "cvssp/audioldm-m-full",
    "cvssp/audioldm-l-full")}


class HiFiGAN(torch.nn.Module):
    """``pretrained:`` a folder saved by transformers (config.json + weights), e.g. the
    ``vocoder/`` folder of a diffusers AudioLDM pipeline. ``config:`` overrides AudioLDM's
    configuration for a new, untrained vocoder. ``random_weights: true`` builds the network
    ``pretrained:`` names with random weights and reads no weights: the configuration from the
    folder's config.json, or for a folder not there that is named after an AudioLDM pipeline
    (``.../audioldm-s-full-v2/vocoder``) or its hub id, AudioLDM's."""

    def __init__(self, pretrained: str | None = None, config: Mapping[str, Any] | None = None, audio=None,
                 random_weights: bool = False):
        super().__init__()
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        if pretrained is not None and random_weights:
            from .pretrained import random_config

            cfg = random_config(pretrained, HIFIGAN_CONFIGS, "hifigan", subfolder="vocoder")
            cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
            self.net = SpeechT5HifiGan(SpeechT5HifiGanConfig.from_dict({**cfg, **dict(config or {})}))
        elif pretrained is not None:
            try:
                self.net = SpeechT5HifiGan.from_pretrained(pretrained)
            except OSError as exc:
                raise TtaError(f"hifigan: cannot load weights from '{pretrained}': {exc}") from None
        else:
            self.net = SpeechT5HifiGan(SpeechT5HifiGanConfig(**{**AUDIOLDM_HIFIGAN, **dict(config or {})}))
        cfg = self.net.config
        self.sample_rate = int(cfg.sampling_rate)
        self.hop_length = int(torch.tensor(cfg.upsample_rates).prod())
        if audio is not None:
            if audio.mel.n_mels != cfg.model_in_dim or audio.sample_rate != self.sample_rate or audio.mel.hop != self.hop_length:
                raise TtaError(
                    f"hifigan expects {cfg.model_in_dim} mel bands at {self.sample_rate} Hz with hop "
                    f"{self.hop_length}; the recipe's audio section has {audio.mel.n_mels} bands at "
                    f"{audio.sample_rate} Hz with hop {audio.mel.hop}"
                )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # the transposed convolutions overshoot by a few samples; AudioLDM trims them too
        return self.net(mel[:, 0])[:, : mel.shape[2] * self.hop_length]
