"""``vae_gan``: trains the mel KL-VAE as AudioLDM and Amphion do (taming's LPIPSWithDiscriminator
without the image-only LPIPS term):

    generator:      L1(x, x̂) / exp(logvar) + logvar         (learned log-variance)
                    + kl_weight * KL(q(z|x) || N(0, I))
                    + disc_factor * λ * -D(x̂)                (after disc_start)
    discriminator:  disc_factor * hinge(D(x), D(x̂))          (after disc_start)

λ balances the adversarial gradient against the reconstruction gradient at the decoder's
last layer (adaptive weight), clamped to [0, 1e4] and scaled by ``disc_weight``. Sums over
pixels are divided by the batch size, as in AudioLDM, so ``kl_weight`` keeps its meaning.

While training it also tracks 1 / std of the latents (AudioLDM's scale-by-std) in the VAE's
``scale_factor`` buffer, which is saved with the weights. The latents' spread grows as the
VAE learns, so the estimate follows recent batches (``scale_momentum``, 0.9: about the last
ten steps), and the value at the end of the stage fits the VAE as it ends.
"""

from __future__ import annotations

from typing import Any

import torch


class LogVariance(torch.nn.Module):
    """One learned scalar, read by calling the module (so a DistributedDataParallel wrapper
    sees it used and averages its gradient over the processes)."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.value


class PatchDiscriminator(torch.nn.Module):
    """pix2pix's PatchGAN (NLayerDiscriminator) on one-channel mels."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[torch.nn.Module] = [torch.nn.Conv2d(1, channels, 4, 2, 1), torch.nn.LeakyReLU(0.2, True)]
        width = channels
        for i in range(1, layers + 1):
            prev, width = width, channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [torch.nn.Conv2d(prev, width, 4, stride, 1, bias=False), torch.nn.GroupNorm(1, width),
                     torch.nn.LeakyReLU(0.2, True)]
        mods.append(torch.nn.Conv2d(width, 1, 4, 1, 1))
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VAEGAN:
    def __init__(
        self,
        kl_weight: float = 1e-6,
        disc_start: int = 50001,
        disc_weight: float = 0.5,
        disc_factor: float = 1.0,
        disc_channels: int = 64,
        disc_layers: int = 3,
        logvar_init: float = 0.0,
        scale_momentum: float = 0.9,
        sample_posterior: bool = True,
    ):
        self.kl_weight, self.disc_start = kl_weight, disc_start
        self.sample_posterior = sample_posterior  # False: decode the posterior's mean (no noise)
        self.disc_weight, self.disc_factor = disc_weight, disc_factor
        self.scale_momentum = scale_momentum
        self.discriminator = PatchDiscriminator(disc_channels, disc_layers)
        # the learned log-variance of the reconstruction likelihood, trained with the VAE
        self.logvar = LogVariance(logvar_init)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"discriminator": self.discriminator, "vae_logvar": self.logvar}

    def setup(self, ctx) -> None:
        self.ctx = ctx
        self.vae_name = ctx.roles.get("autoencoder")
        if self.vae_name not in ctx.trains:
            raise ValueError("vae_gan trains the autoencoder: list it in the stage's trains")
        self.vae = ctx.components[self.vae_name]
        self.bare = ctx.unwrap(self.vae_name)
        # with adapters the encoder, and so the latents' spread, is the base's: its scale stays
        self.track_scale = self.vae_name not in getattr(ctx.stage, "adapted", ())
        self.disc = ctx.components["discriminator"]
        self.logvar_mod = ctx.components["vae_logvar"]

    def train_dataset(self, ctx) -> Any:
        from tta_core.plugin import training_dataset

        return training_dataset(ctx, mel=True)

    def collate(self, items):
        from tta_core.plugin import collate

        return collate(items)

    def parameter_groups(self, ctx) -> dict[str, list]:
        # with adapters on the autoencoder only they require grad (tta_core.adapters)
        return {"generator": [p for p in self.bare.parameters() if p.requires_grad] + list(self.logvar.parameters()),
                "discriminator": list(self.discriminator.parameters())}

    def _adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        last = self.bare.last_layer()
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return torch.clamp(weight, 0.0, 1e4).detach() * self.disc_weight

    def losses(self, batch: dict, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = batch["mel"]
        recon, posterior = self.vae(x, sample=self.sample_posterior, generator=generator)
        recon = recon[..., : x.shape[-2], :]
        b = x.shape[0]
        rec = torch.abs(x - recon)
        logvar = self.logvar_mod()  # through the module (DistributedDataParallel's, under torchrun)
        nll = (rec / torch.exp(logvar) + logvar).sum() / b
        kl = posterior.kl().sum() / b
        loss = nll + self.kl_weight * kl
        out = {"log/rec_l1": rec.mean().detach(), "log/kl": kl.detach(), "log/logvar": logvar.detach()}
        if getattr(self, "track_scale", True):
            self._track_scale(posterior)
        adversarial = step >= self.disc_start and self.disc_factor > 0
        if adversarial:
            g_loss = -self.disc(recon).mean()
            weight = self._adaptive_weight(nll, g_loss) if torch.is_grad_enabled() else torch.tensor(0.0)
            loss = loss + self.disc_factor * weight * g_loss
            real, fake = self.disc(x.detach()), self.disc(recon.detach())
            d_loss = self.disc_factor * 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
            out.update({"discriminator": d_loss, "log/g_adv": g_loss.detach(), "log/d_weight": weight})
        out["generator"] = loss
        return out

    @torch.no_grad()
    def validate(self, ctx, out_dir) -> dict:
        """Reconstruct a few training clips (evaluation crops): original and reconstruction
        side by side as spectrogram PNGs, plus WAVs through the recipe's vocoder when it
        has one. Returns the mean L1 of the reconstructed mels."""
        from tta_core.plugin import collate, save_spectrogram, training_dataset, write_audio

        data = training_dataset(ctx, mel=True, train=False)
        batch = collate([data[i] for i in range(min(4, len(data)))])
        if batch is None:
            return {}
        vae = ctx.unwrap(self.vae_name)
        was_training = vae.training
        vae.eval()
        try:
            mel = batch["mel"].to(ctx.device)
            recon = vae.decode(vae.encode(mel))[..., : mel.shape[-2], :]
        finally:
            vae.train(was_training)
        out_dir.mkdir(parents=True, exist_ok=True)
        vocoder = ctx.components.get(ctx.roles.get("vocoder", ""))
        if vocoder is not None:
            for i, (a, b) in enumerate(zip(vocoder(mel.float()).cpu(), vocoder(recon.float()).cpu())):
                rate = int(vocoder.sample_rate)
                write_audio(out_dir / f"{i:02d}-original.wav", a, rate)
                write_audio(out_dir / f"{i:02d}-reconstruction.wav", b, rate)
                save_spectrogram(out_dir / f"{i:02d}-reconstruction.png", b, rate, ctx.audio,
                                 f"reconstruction of {batch['id'][i]}")
        return {"mel_l1": float((recon - mel).abs().mean())}

    @torch.no_grad()
    def _track_scale(self, posterior) -> None:
        # the spread of posterior samples, in expectation: var(mean) + mean posterior variance;
        # updated on the device, with no read-back per step
        # over the global batch: under torchrun the processes add up their sums first
        mean, var = posterior.mean.float(), posterior.var.float()
        sums = torch.stack([torch.tensor(float(mean.numel()), device=mean.device), mean.sum(), (mean * mean).sum(),
                            var.sum()])
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        n, s1, s2, v = sums
        std = ((s2 - s1 * s1 / n) / (n - 1) + v / n).sqrt()
        target = 1.0 / std
        buf = self.bare.scale_factor
        new = self.scale_momentum * buf + (1 - self.scale_momentum) * target
        if not getattr(self, "_scale_seen", False):  # the first batch of a fresh VAE sets it outright
            new = torch.where(buf == 1.0, target, new)
        buf.copy_(torch.where(torch.isfinite(target) & (std > 0), new, buf))
        self._scale_seen = True
