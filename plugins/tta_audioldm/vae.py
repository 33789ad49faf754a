"""``kl_vae``: the AudioLDM / Amphion mel autoencoder, diffusers' AutoencoderKL.

log-mel [B, 1, T, F] -> latent [B, C, T / r, F / r] with r = 2 ** (len(channels) - 1).
The latent is scaled by ``scale_factor`` (AudioLDM's scale-by-std: 1 / std of the latents,
estimated from data while the VAE trains), a buffer saved with the weights, so a latent
diffusion model sees unit-variance latents whatever VAE it sits on.

``diffusers_config``: a whole AutoencoderKL configuration (a diffusers ``vae/config.json``)
builds that network exactly (its ``norm_num_groups`` and every other field; ``channels``,
``norm_groups`` and the other structural arguments are then not used), its ``scaling_factor``
as the scale (``tta-run import audioldm-diffusers`` writes it into the recipe). A configuration
kl_vae cannot be is refused: other than one input and output channel, or ``shift_factor`` /
``latents_mean`` / ``latents_std`` (kl_vae only scales its latents).

``mel_mean`` / ``mel_std``: the network sees ``(log_mel - mel_mean) / mel_std`` and its output
is mapped back, so reconstructions and losses stay in log-mel units. AudioLDM and Amphion feed
the log-mel as it is (0 and 1, the defaults, and what imported weights expect); a VAE trained
from scratch on a small budget learns several times faster from centred input (the log-mel's
silence floor sits near -11.5, so a decoder without the offset spends its first hundreds of
steps learning a bias).

``posterior_std``: the posterior's standard deviation, fixed, in units of the scaled latent
(whose spread is 1): the encoder's log-variance output is then not used, and the noise the
decoder learns to forgive stays that share of the latent's spread however long the VAE trains.
By default (None) the posterior's variance is learned, as in AudioLDM; with the small KL
weights text-to-audio VAEs train with, it shrinks as training goes on, and a decoder trained
on less noise forgives a diffusion model's small errors less. (Exported to diffusers, the
AutoencoderKL keeps the encoder's unused log-variance output: its ``latent_dist.mode()`` is
this VAE's latent, its ``sample()`` is not; AudioLDMPipeline samples without either.)

``gradient_checkpointing: true``: the encoder's and decoder's blocks recompute their
activations in the backward pass instead of keeping them (diffusers' gradient checkpointing):
less memory while the VAE trains, more compute; nothing changes when it is frozen.

The network is tta's own (:mod:`tta_audioldm.nets`: diffusers' parameter names and outputs,
without importing diffusers) for ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` layouts, which
are every one built here and AudioLDM's; any other ``diffusers_config`` is diffusers' class.
"""

from __future__ import annotations

from typing import Sequence

import torch


#: AutoencoderKL's defaults (diffusers), for the keys a configuration leaves out.
_AUTOENCODER_KL_DEFAULTS = {"block_out_channels": (64,), "latent_channels": 4, "norm_num_groups": 32,
                            "scaling_factor": 0.18215, "in_channels": 3, "out_channels": 3}


def _check_diffusers_config(cfg: dict) -> None:
    """Refuse what kl_vae cannot be: a network on other than one mel channel, or latents
    shifted or normalised per channel (kl_vae only scales them, as AudioLDM does)."""
    if int(cfg["in_channels"]) != 1 or int(cfg["out_channels"]) != 1:
        raise ValueError(f"kl_vae: diffusers_config has in_channels {cfg['in_channels']} and out_channels "
                         f"{cfg['out_channels']}; kl_vae encodes one log-mel channel (both must be 1)")
    for key in ("shift_factor", "latents_mean", "latents_std"):
        if cfg.get(key) is not None:
            raise ValueError(f"kl_vae: diffusers_config sets {key}={cfg[key]!r}; kl_vae only scales latents "
                             "(scaling_factor), it cannot shift or normalise them")


class KLVAE(torch.nn.Module):
    domain = "mel"

    def __init__(
        self,
        latent_channels: int = 8,
        channels: Sequence[int] = (128, 256, 512),
        layers_per_block: int = 2,
        norm_groups: int = 32,
        mid_attention: bool = True,
        scale_factor: float = 1.0,
        mel_mean: float = 0.0,
        mel_std: float = 1.0,
        diffusers_config: dict | None = None,
        gradient_checkpointing: bool = False,
        posterior_std: float | None = None,
        audio=None,
    ):
        super().__init__()
        from .nets import AutoencoderKL, vae_unsupported

        if diffusers_config is not None:  # a diffusers vae/config.json decides the structure, its groups too
            cfg = {**_AUTOENCODER_KL_DEFAULTS, **dict(diffusers_config)}
            channels = tuple(cfg["block_out_channels"])
            latent_channels, norm_groups = int(cfg["latent_channels"]), int(cfg["norm_num_groups"])
            scale_factor = float(cfg["scaling_factor"])
            _check_diffusers_config(cfg)
        channels = tuple(channels)
        if any(c % norm_groups for c in channels):
            raise ValueError(f"kl_vae: every channel count must be a multiple of the {norm_groups} normalisation "
                             f"groups (norm_groups, or diffusers_config's norm_num_groups), got {channels}")
        if diffusers_config is not None and vae_unsupported(dict(diffusers_config)) is not None:
            from diffusers import AutoencoderKL as DiffusersAutoencoderKL

            self.vae = DiffusersAutoencoderKL.from_config(dict(diffusers_config))
        elif diffusers_config is not None:
            self.vae = AutoencoderKL(**dict(diffusers_config))
        else:
            self.vae = AutoencoderKL(
                in_channels=1, out_channels=1, latent_channels=latent_channels,
                down_block_types=("DownEncoderBlock2D",) * len(channels),
                up_block_types=("UpDecoderBlock2D",) * len(channels),
                block_out_channels=channels, layers_per_block=layers_per_block,
                norm_num_groups=norm_groups, mid_block_add_attention=mid_attention,
            )
        if gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        self.latent_channels = latent_channels
        self.ratio = 2 ** (len(channels) - 1)
        self.n_mels = audio.mel.n_mels if audio is not None else 64
        if self.n_mels % self.ratio:
            raise ValueError(f"kl_vae: {self.n_mels} mel bins do not divide by the compression {self.ratio}")
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        if not mel_std > 0:
            raise ValueError(f"kl_vae: mel_std must be positive, got {mel_std}")
        self.mel_mean, self.mel_std = float(mel_mean), float(mel_std)
        if posterior_std is not None and not 0 < posterior_std < 1:
            raise ValueError(f"kl_vae: posterior_std is a share of the scaled latent's spread, in (0, 1); "
                             f"got {posterior_std}")
        self.posterior_std = None if posterior_std is None else float(posterior_std)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        """Latent shape for ``n`` mel frames; frames are padded up to a multiple of r."""
        return (self.latent_channels, -(-n // self.ratio), self.n_mels // self.ratio)

    def _pad(self, mel: torch.Tensor) -> torch.Tensor:
        extra = -mel.shape[-2] % self.ratio
        # pad with the log floor, the value silence takes, not zeros (which are loud)
        return torch.nn.functional.pad(mel, (0, 0, 0, extra), value=float(mel.min())) if extra else mel

    def posterior(self, mel: torch.Tensor):
        """The unscaled latent's diagonal Gaussian (diffusers' DiagonalGaussianDistribution)."""
        dist = self.vae.encode((self._pad(mel) - self.mel_mean) / self.mel_std).latent_dist
        if self.posterior_std is None:
            return dist
        # fixed: posterior_std in scaled units is posterior_std / scale_factor unscaled
        logvar = 2.0 * torch.log(self.posterior_std / self.scale_factor.float())
        return type(dist)(torch.cat([dist.mean, logvar.to(dist.mean.dtype).expand_as(dist.mean)], dim=1))

    def encode(self, mel: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent: the posterior mean (or a sample, for training a diffusion model)."""
        dist = self.posterior(mel)
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scale_factor

    def encode_moments(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scaled posterior's mean and standard deviation: ``encode(sample=True)`` is
        ``mean + std * noise`` (what latent caches store, to keep sampling the posterior)."""
        dist = self.posterior(mel)
        return dist.mean * self.scale_factor, dist.std * self.scale_factor

    def decode(self, latent: torch.Tensor, **_: object) -> torch.Tensor:
        return self._mel(self.vae.decode(latent / self.scale_factor).sample)

    def _mel(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.mel_std + self.mel_mean  # exact with the defaults (x * 1 + 0 == x)

    def forward(self, mel: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """Reconstruction and posterior, for training: (recon [B,1,T',F], posterior)."""
        dist = self.posterior(mel)
        z = dist.sample(generator) if sample else dist.mode()
        return self._mel(self.vae.decode(z).sample), dist

    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight, where the adaptive GAN weight is measured."""
        return self.vae.decoder.conv_out.weight
