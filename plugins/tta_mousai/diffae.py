"""``diffae``: the diffusion autoencoder of Mousai and of the bird-sound repository.

wave [B, in_channels, N] -> latent [B, latent_channels, N / r] with audio-encoders-pytorch's
magnitude-STFT encoder (ME1d) and a tanh bottleneck, r = stft_hop_length * prod(encoder
factors). Decoding is diffusion: a 1-D UNetV0 behind LTPlugin (a learned filterbank of
``num_filters`` filters, ``window_length``/``stride``), whose level ``inject_depth`` receives
the latent as extra channels, is run by one of tta's samplers (``vsampler`` by default, as
that repository; any registered sampler) over ``v_diffusion`` for ``decode_steps`` steps.
Compression: r / latent_channels per input channel (that repository's stereo default: 64).

Trained by the ``diffae`` objective: the v-diffusion loss of the decoder on cropped waves,
conditioned on their own latents (audio-diffusion-pytorch's ``DiffusionAE.forward``). The
names of ``encoder.*`` and ``net.*`` are that class's, so its weights load as they are.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .rebuild import RebuildOnCopy


class DiffAE(RebuildOnCopy, torch.nn.Module):
    domain = "waveform"

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (256, 512, 512, 512, 1024, 1024, 1024),
        factors: Sequence[int] = (1, 2, 2, 2, 2, 2, 2),
        items: Sequence[int] = (1, 2, 2, 2, 2, 2, 2),
        num_filters: int = 128,
        window_length: int = 64,
        stride: int = 64,
        inject_depth: int = 4,
        encoder_channels: int = 512,
        encoder_multipliers: Sequence[int] = (1, 1, 1),
        encoder_factors: Sequence[int] = (2, 2),
        encoder_num_blocks: Sequence[int] = (4, 8),
        stft_num_fft: int = 1023,
        stft_hop_length: int = 256,
        latent_channels: int = 32,
        resnet_groups: int = 8,
        decode_steps: int = 100,
    ):
        super().__init__()
        from audio_diffusion_pytorch import LTPlugin, UNetV0
        from audio_encoders_pytorch import ME1d, TanhBottleneck

        self._args = dict(in_channels=in_channels, channels=tuple(channels), factors=tuple(factors), items=tuple(items),
                          num_filters=num_filters, window_length=window_length, stride=stride,
                          inject_depth=inject_depth, encoder_channels=encoder_channels,
                          encoder_multipliers=tuple(encoder_multipliers), encoder_factors=tuple(encoder_factors),
                          encoder_num_blocks=tuple(encoder_num_blocks), stft_num_fft=stft_num_fft,
                          stft_hop_length=stft_hop_length, latent_channels=latent_channels,
                          resnet_groups=resnet_groups, decode_steps=decode_steps)
        levels = len(channels)
        if len(factors) != levels or len(items) != levels:
            raise ValueError(f"diffae: channels, factors and items need one entry per level ({levels})")
        if not 0 <= inject_depth < levels:
            raise ValueError(f"diffae: inject_depth {inject_depth} is not a level (0..{levels - 1})")
        if len(encoder_multipliers) != len(encoder_factors) + 1 or len(encoder_num_blocks) != len(encoder_factors):
            raise ValueError("diffae: encoder_multipliers needs one more entry than encoder_factors, "
                             "encoder_num_blocks as many")
        self.latent_factor = stft_hop_length * math.prod(encoder_factors)
        injected = stride * math.prod(factors[: inject_depth + 1])
        if injected != self.latent_factor:
            raise ValueError(f"diffae: the decoder's level {inject_depth} runs at 1/{injected} of the wave, the "
                             f"encoder's latent at 1/{self.latent_factor}: change inject_depth, stride or factors")
        # the decoder's levels under the injected one still divide the latent's length
        self.deeper = math.prod(factors[inject_depth + 1:])
        self.in_channels, self.latent_channels, self.decode_steps = in_channels, latent_channels, decode_steps
        self.encoder = ME1d(in_channels=in_channels, channels=encoder_channels, multipliers=list(encoder_multipliers),
                            factors=list(encoder_factors), num_blocks=list(encoder_num_blocks),
                            stft_num_fft=stft_num_fft, stft_hop_length=stft_hop_length,
                            out_channels=latent_channels, bottleneck=TanhBottleneck())
        context = [0] * levels
        context[inject_depth] = latent_channels
        self.net = LTPlugin(UNetV0, num_filters=num_filters, window_length=window_length, stride=stride)(
            dim=1, in_channels=in_channels, channels=list(channels), factors=list(factors), items=list(items),
            context_channels=context, resnet_groups=resnet_groups)
        self.inject_depth = inject_depth

    # -- the contract ------------------------------------------------------------------------
    def latent_shape(self, n: int) -> tuple[int, ...]:
        """Latent frames for ``n`` samples: n / r, rounded up to what the decoder's deeper
        levels divide; decode then gives that many frames times r samples (>= n)."""
        frames = -(-n // self.latent_factor)
        return (self.latent_channels, -(-frames // self.deeper) * self.deeper)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, in_channels, N] -> latent [B, latent_channels, latent_shape(N)[1]] in [-1, 1]."""
        target = self.latent_shape(wave.shape[-1])[1] * self.latent_factor
        if wave.shape[-1] < target:
            wave = torch.nn.functional.pad(wave, (0, target - wave.shape[-1]))
        return self.encoder(wave)

    def decoder_net(self, latent: torch.Tensor):
        """The decoder as a Denoiser-shaped function ``(x_t, t, cond) -> v`` for ``latent``."""
        channels = [None] * self.inject_depth + [latent]

        def net(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
            return self.net(x, time=t.to(x.dtype), channels=channels)
        return net

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss (audio-diffusion-pytorch's ``DiffusionAE.forward``): the
        v-diffusion loss of the decoder on ``wave`` [B, in_channels, N], conditioned on the
        wave's own latent, so encoder and decoder learn together. Called through the module
        (not a method) so distributed training synchronises its gradients."""
        from tta_core.plugin import VDiffusion

        target = self.latent_shape(wave.shape[-1])[1] * self.latent_factor
        if wave.shape[-1] < target:
            wave = torch.nn.functional.pad(wave, (0, target - wave.shape[-1]))
        latent = self.encoder(wave)
        return VDiffusion().loss(self.decoder_net(latent), wave, None, generator=generator)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, steps: int | None = None, sampler: Any = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """latent [B, C, L] -> wave [B, in_channels, L * r], sampled with ``sampler`` (a tta
        sampler; default ``vsampler``) in ``steps`` steps (default ``decode_steps``) of
        v-diffusion, from noise drawn with ``generator``."""
        from tta_core.plugin import VDiffusion, VSampler

        process = VDiffusion()
        sampler = VSampler() if sampler is None else sampler
        steps = self.decode_steps if steps is None else steps
        shape = (latent.shape[0], self.in_channels, latent.shape[-1] * self.latent_factor)
        gen_device = generator.device if generator is not None else latent.device
        noise = torch.randn(shape, generator=generator, device=gen_device, dtype=latent.dtype).to(latent.device)
        schedule = process.schedule(steps).to(latent.device)
        denoise = process.denoiser(self.decoder_net(latent), None)
        return sampler(denoise, noise, schedule, generator=generator)
