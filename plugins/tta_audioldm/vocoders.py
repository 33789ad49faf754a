"""Vocoders: log-mel [B, 1, T, F] -> wave [B, T * hop].

``griffin_lim`` needs no weights: the mel is mapped back to a linear magnitude with the
recipe's own mel filterbank (a non-negative inverse, or its pseudo-inverse), then phase is
recovered by Griffin-Lim (torchaudio) with the recipe's STFT settings. ``learned_griffin_lim``
starts the inverse from a shape a trained network predicts (after Tacotron's
linear-spectrogram post-net; trained by the ``linear_spectrogram`` objective). ``hifigan`` is AudioLDM's 16 kHz / 64-band HiFi-GAN
(transformers' SpeechT5HifiGan, built by :mod:`tta_audioldm.nets` with the same names, outputs
and initial weights, without importing transformers), loaded from a local folder.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from tta_core.plugin import TtaError


class GriffinLim(torch.nn.Module):
    """log-mel -> linear magnitude -> Griffin-Lim's phase. ``inverse`` maps the mel back to a
    linear magnitude: ``nonnegative`` (default) finds a non-negative magnitude whose mel is the
    given one, by ``inverse_iter`` multiplicative updates from a flat start (Lee & Seung's for
    the KL divergence: S <- S * Fᵀ(M / F S) / Fᵀ1, F the filterbank), which keeps a partial's
    energy where the mel band has it; ``pinv``: the filterbank's pseudo-inverse with negative
    values set to 0 (what the mel does not determine comes out spread and negative values
    clipped, so the mel of the result is not the given one)."""

    INVERSES = ("nonnegative", "pinv")

    def __init__(self, n_iter: int = 32, momentum: float = 0.99, inverse: str = "nonnegative",
                 inverse_iter: int = 30, audio=None):
        super().__init__()
        from tta_core.plugin import AudioConfig, UsageError, mel_filterbank

        if inverse not in self.INVERSES:
            raise UsageError(f"griffin_lim: inverse must be one of {', '.join(self.INVERSES)}, got '{inverse}'")
        if inverse_iter < 1 or n_iter < 1:
            raise UsageError(f"griffin_lim: n_iter and inverse_iter must be >= 1, got {n_iter} and {inverse_iter}")
        self.audio = audio if audio is not None else AudioConfig()
        m = self.audio.mel
        self.sample_rate, self.hop_length = self.audio.sample_rate, m.hop
        self.n_iter, self.momentum, self.inverse, self.inverse_iter = n_iter, momentum, inverse, inverse_iter
        fb = mel_filterbank(self.audio, torch.float64)  # [n_mels, n_freq]
        self.register_buffer("filterbank", fb.float(), persistent=False)
        # bins no band covers (none for fmin 0 and fmax at Nyquist) stay at 0 instead of 0 / 0
        self.register_buffer("column_sums", fb.sum(0).clamp(min=1e-12).float()[:, None], persistent=False)
        self.register_buffer("pseudo_inverse", torch.linalg.pinv(fb).float(), persistent=False)  # [n_freq, n_mels]

    def mel_magnitude(self, mel: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """log-mel [B, 1, T, n_mels] -> linear magnitude [B, n_freq, T] by the recipe's
        ``inverse``; ``start`` [B, n_freq, T] (positive) is where the updates begin (flat: ones)."""
        power = torch.exp(mel[:, 0].float()).transpose(1, 2)  # [B, n_mels, T]: mel magnitudes
        if self.inverse == "pinv":
            return torch.clamp(self.pseudo_inverse @ power, min=0.0)
        from tta_core.plugin import LOG_FLOOR

        fb = self.filterbank
        s = start if start is not None else power.new_ones(power.shape[0], fb.shape[1], power.shape[2])
        # a band at the log-mel's floor only says its energy is at most the floor: it is only pulled down
        floored = power <= LOG_FLOOR * 1.001
        for _ in range(self.inverse_iter):
            ratio = power / (fb @ s).clamp(min=1e-30)
            ratio = torch.where(floored, ratio.clamp(max=1.0), ratio)
            s = s * (fb.T @ ratio) / self.column_sums
        return s

    def griffin_lim(self, magnitude: torch.Tensor) -> torch.Tensor:
        """linear magnitude [B, n_freq, T] (frames centred on every hop) -> wave [B, T * hop]."""
        import torchaudio.functional as AF

        m = self.audio.mel
        frames = magnitude.shape[-1]
        # torchaudio frames centred STFTs: T * hop samples have T + 1 frames; repeat the last
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
        window = torch.hann_window(m.win, device=magnitude.device)
        return AF.griffinlim(
            magnitude, window, m.n_fft, m.hop, m.win, power=1.0, n_iter=self.n_iter,
            momentum=self.momentum, length=frames * m.hop, rand_init=False,
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.griffin_lim(self.mel_magnitude(mel))


class _ConvNeXtBlock(torch.nn.Module):
    """ConvNeXt's block over time (as Vocos' backbone): depthwise conv, LayerNorm, a 3x wider
    pointwise MLP with GELU, layer scale, residual. [B, C, T] -> [B, C, T]."""

    def __init__(self, dim: int, kernel_size: int, scale: float):
        super().__init__()
        self.depthwise = torch.nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.up = torch.nn.Linear(dim, 3 * dim)
        self.down = torch.nn.Linear(3 * dim, dim)
        self.gamma = torch.nn.Parameter(torch.full((dim,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.depthwise(x).transpose(1, 2))
        y = self.down(torch.nn.functional.gelu(self.up(y)))
        return x + (self.gamma * y).transpose(1, 2)


class LearnedGriffinLim(GriffinLim):
    """Griffin-Lim from a linear magnitude that a trained network shapes (after Tacotron's
    post-net, Wang et al. 2017). The mel fixes how much energy each band holds, not where in
    the band: a 1-D ConvNeXt over frames (``channels`` wide, ``layers`` blocks of kernel
    ``kernel_size``) predicts that shape from the log-mel, and the non-negative inverse starts
    its updates from it, so the magnitude still has exactly the given mel. The network's last
    layer starts at zero (a flat start): an untrained one is ``griffin_lim`` exactly. Trained by
    the ``linear_spectrogram`` objective, through the updates. ``mel_mean`` / ``mel_std``
    centre the log-mel the network sees."""

    def __init__(self, channels: int = 96, layers: int = 2, kernel_size: int = 7, n_iter: int = 32,
                 momentum: float = 0.99, inverse_iter: int = 10, mel_mean: float = -5.0, mel_std: float = 2.0,
                 audio=None):
        from tta_core.plugin import UsageError

        super().__init__(n_iter, momentum, "nonnegative", inverse_iter, audio)
        if channels < 1 or layers < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise UsageError(f"learned_griffin_lim: channels and layers must be >= 1 and kernel_size odd, got "
                             f"channels={channels}, layers={layers}, kernel_size={kernel_size}")
        if mel_std <= 0:
            raise UsageError(f"learned_griffin_lim: mel_std must be > 0, got {mel_std}")
        m = self.audio.mel
        self.mel_mean, self.mel_std = float(mel_mean), float(mel_std)
        self.embed = torch.nn.Conv1d(m.n_mels, channels, kernel_size, padding=kernel_size // 2)
        self.blocks = torch.nn.ModuleList(_ConvNeXtBlock(channels, kernel_size, 1.0 / layers) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(channels)
        self.head = torch.nn.Linear(channels, m.n_fft // 2 + 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel [B, 1, T, n_mels] -> linear magnitude [B, n_freq, T]."""
        x = self.embed(((mel[:, 0].float() - self.mel_mean) / self.mel_std).transpose(1, 2))
        for block in self.blocks:
            x = block(x)
        shape = self.head(self.norm(x.transpose(1, 2))).transpose(1, 2)
        # the updates set each band's level, except in bands at the floor, where the start's level
        # stays if it is lower: silence can be quieter than the floor
        return self.mel_magnitude(mel, start=torch.exp(shape.clamp(max=10.0)))

    def forward(self, mel: torch.Tensor, output: str = "wave") -> torch.Tensor:
        """``output="wave"``: the wave [B, T * hop]; ``"magnitude"``: the linear magnitude
        [B, n_freq, T] Griffin-Lim starts from (what the objective trains)."""
        magnitude = self.magnitude(mel)
        return magnitude if output == "magnitude" else self.griffin_lim(magnitude)


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
        from .nets import SpeechT5HifiGan
        from .pretrained import local_safetensors

        if pretrained is not None and random_weights:
            from .pretrained import random_config

            cfg = random_config(pretrained, HIFIGAN_CONFIGS, "hifigan", subfolder="vocoder")
            self.net = SpeechT5HifiGan(**{**cfg, **dict(config or {})})
        elif pretrained is not None:
            net = local_safetensors(pretrained, "speecht5_hifigan", lambda cfg: SpeechT5HifiGan(**cfg))
            if net is None:  # a hub id, or weights in another format: transformers reads them
                from transformers import SpeechT5HifiGan as TransformersHifiGan

                try:
                    net = TransformersHifiGan.from_pretrained(pretrained)
                except OSError as exc:
                    raise TtaError(f"hifigan: cannot load weights from '{pretrained}': {exc}") from None
            self.net = net
        else:
            self.net = SpeechT5HifiGan(**{**AUDIOLDM_HIFIGAN, **dict(config or {})})
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
