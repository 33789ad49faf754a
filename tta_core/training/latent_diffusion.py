"""``latent_diffusion``: train a denoiser on an autoencoder's latents, conditioned on text.

Shared by every family (AudioLDM on mel latents, the diffusion autoencoder's waveform
latents): the autoencoder is frozen; the conditioner is frozen unless the stage trains it;
the recipe's process gives the training pairs and the loss, so training and sampling agree
on the parameterisation.

- Caption dropout (``cfg_dropout``) replaces an item's conditioning by the conditioner's
  ``null`` so the model learns the unconditional estimate classifier-free guidance needs.
- ``audio_conditioning: true`` conditions on the audio side of a conditioner that has one
  (CLAP's ``encode_audio``), as AudioLDM trains on audio embeddings and samples from text.
- ``sample_posterior``: encode with a sample of the VAE posterior (AudioLDM) rather than its
  mean.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from ..interfaces import Conditioning


def select(cond: Conditioning, other: Conditioning, take_other: torch.Tensor) -> Conditioning:
    """Per item, ``other`` where ``take_other`` [B] is True, else ``cond`` (token lengths
    padded to match)."""
    both = Conditioning.cat([cond, other])
    b = cond.batch_size
    out = {}
    for name in ("tokens", "mask", "pooled"):
        t = getattr(both, name)
        if t is None:
            continue
        shape = (b,) + (1,) * (t.dim() - 1)
        out[name] = torch.where(take_other.reshape(shape), t[b:], t[:b])
    return Conditioning(**out)


class LatentDiffusion:
    def __init__(self, cfg_dropout: float = 0.1, audio_conditioning: bool = False, sample_posterior: bool = True):
        if not 0 <= cfg_dropout < 1:
            raise UsageError(f"latent_diffusion: cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.cfg_dropout = cfg_dropout
        self.audio_conditioning = audio_conditioning
        self.sample_posterior = sample_posterior

    def setup(self, ctx: Any) -> None:
        self.ctx = ctx
        for kind in ("autoencoder", "conditioner", "denoiser", "process"):
            ctx.role(kind)
        self.autoencoder = ctx.role("autoencoder")
        self.conditioner = ctx.role("conditioner")
        self.denoiser = ctx.role("denoiser")
        self.process = ctx.role("process")
        self.train_text = ctx.roles["conditioner"] in ctx.trains
        if ctx.roles["autoencoder"] in ctx.trains:
            raise UsageError("latent_diffusion keeps the autoencoder frozen; train it in its own stage")
        if self.audio_conditioning and not hasattr(ctx.unwrap(ctx.roles["conditioner"]), "encode_audio"):
            raise UsageError(f"audio_conditioning: the conditioner '{ctx.roles['conditioner']}' has no audio side")

    def train_dataset(self, ctx: Any) -> Any:
        from .datasets import training_dataset

        domain = getattr(ctx.unwrap(ctx.roles["autoencoder"]), "domain", "mel")
        return training_dataset(ctx, mel=domain == "mel", wave=domain == "waveform" or self.audio_conditioning)

    def collate(self, items):
        from ..data.dataset import collate

        return collate(items)

    def parameter_groups(self, ctx: Any) -> dict[str, list]:
        params = [p for name in ctx.trains for p in ctx.unwrap(name).parameters() if p.requires_grad]
        if not params:
            raise UsageError(f"stage '{ctx.stage.name}' trains nothing: list the denoiser in trains")
        return {"main": params}

    def _latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        ae = self.autoencoder
        x = batch["mel"] if getattr(ae, "domain", "mel") == "mel" else batch["wave"][:, None]
        with torch.no_grad():
            if self.sample_posterior and "sample" in _params(ae.encode):
                return ae.encode(x, sample=True, generator=generator)
            return ae.encode(x)

    def _conditioning(self, batch: dict, generator: torch.Generator) -> Conditioning:
        grad = torch.enable_grad() if self.train_text else torch.no_grad()
        with grad:
            if self.audio_conditioning:
                cond = self.conditioner.encode_audio(batch["wave"], self.ctx.audio.sample_rate)
            else:
                cond = self.conditioner.encode_text(list(batch["caption"]))
            b = cond.batch_size
            if self.cfg_dropout > 0:
                device = (cond.tokens if cond.tokens is not None else cond.pooled).device
                drop = torch.rand(b, generator=generator, device=generator.device).to(device) < self.cfg_dropout
                if bool(drop.any()):
                    cond = select(cond, self.conditioner.null(b), drop)
        return cond

    def losses(self, batch: dict, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        z = self._latents(batch, generator)
        cond = self._conditioning(batch, generator)
        loss = self.process.loss(self.denoiser, z, cond, generator=generator)
        return {"main": loss}


def _params(fn: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
