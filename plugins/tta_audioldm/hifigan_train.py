"""``hifigan``: trains the recipe's ``hifigan`` vocoder (its generator) as HiFi-GAN does (Kong
et al. 2020), on waveform crops and their log-mels:

    generator:      45 * L1(mel(ŷ), mel(y))                          (the recipe's own log-mel)
                    + Σ_D Σ_layers 2 * L1(D_l(y), D_l(ŷ))            (feature matching)
                    + Σ_D mean((1 - D(ŷ))²)                          (least-squares adversarial)
    discriminators: Σ_D mean((1 - D(y))²) + mean(D(ŷ)²)

D: the multi-period discriminator (periods 2, 3, 5, 7, 11) and the multi-scale one (the wave,
then twice average-pooled), each ``disc_channels`` wide (HiFi-GAN's: 32 and 128; smaller ones
train on a CPU). The adversarial and feature-matching terms start at ``disc_start`` (0: from
the first step); before, the generator learns from the mel loss alone. The log-mel is the one
the recipe's data uses (``audio.mel``), so a trained vocoder inverts exactly the mels the
autoencoder makes.

``stft_weight`` (default 0: HiFi-GAN's losses alone) adds Parallel WaveGAN's multi-resolution
STFT loss (Yamamoto et al. 2020; UnivNet and BigVGAN's recipes use it too) to the generator's:

    stft_weight * mean_(n_fft, hop, win) ( ||S - Ŝ||_F / ||S||_F  +  mean |log S - log Ŝ| )

S = |STFT| of the wave at each of ``stft_resolutions``. It trains the spectrum at every
frequency, not only through the mel bands, and a small generator learns much sooner from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _layers(convs: torch.nn.ModuleList, post: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """A sub-discriminator's score (flattened) and every layer's output (for feature matching)."""
    maps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        maps.append(x)
    x = post(x)
    maps.append(x)
    return x.flatten(1), maps


class PeriodDiscriminator(torch.nn.Module):
    """HiFi-GAN's sub-discriminator on the wave folded by ``period`` into [T / p, p]."""

    def __init__(self, period: int, channels: int = 32):
        super().__init__()
        self.period = period
        widths = [1, channels, channels * 4, channels * 16, channels * 32, channels * 32]
        self.convs = torch.nn.ModuleList(
            torch.nn.utils.parametrizations.weight_norm(
                torch.nn.Conv2d(a, b, (5, 1), (3, 1) if i < 4 else 1, padding=(2, 0)))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.post = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(widths[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            pad = self.period - t % self.period
            x = F.pad(x, (0, pad), "reflect" if pad < t else "constant")
            t += pad
        return _layers(self.convs, self.post, x.view(b, c, t // self.period, self.period))


class ScaleDiscriminator(torch.nn.Module):
    """HiFi-GAN's (MelGAN's) sub-discriminator on the wave at one scale."""

    def __init__(self, channels: int = 128):
        super().__init__()
        c = channels
        spec = [(1, c, 15, 1, 1, 7), (c, c, 41, 2, 4, 20), (c, 2 * c, 41, 2, 16, 20), (2 * c, 4 * c, 41, 4, 16, 20),
                (4 * c, 8 * c, 41, 4, 16, 20), (8 * c, 8 * c, 41, 1, 16, 20), (8 * c, 8 * c, 5, 1, 1, 2)]
        self.convs = torch.nn.ModuleList(
            torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(a, b, k, s, groups=min(g, a, b), padding=p))
            for a, b, k, s, g, p in spec)
        self.post = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(8 * c, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _layers(self.convs, self.post, x)


class Discriminators(torch.nn.Module):
    """The multi-period and multi-scale discriminators: every sub-discriminator's
    (score, feature maps) for a wave [B, 1, N]."""

    def __init__(self, periods=(2, 3, 5, 7, 11), period_channels: int = 32, scale_channels: int = 128):
        super().__init__()
        self.periods = torch.nn.ModuleList(PeriodDiscriminator(p, period_channels) for p in periods)
        self.scales = torch.nn.ModuleList(ScaleDiscriminator(scale_channels) for _ in range(3))
        self.pool = torch.nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        outs = [d(x) for d in self.periods]
        for i, d in enumerate(self.scales):
            if i:
                x = self.pool(x)
            outs.append(d(x))
        return outs


#: Parallel WaveGAN's three resolutions: (n_fft, hop, win).
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def stft_loss(fake: torch.Tensor, real: torch.Tensor, resolutions=STFT_RESOLUTIONS,
              eps: float = 1e-7) -> torch.Tensor:
    """Multi-resolution STFT loss of waves [B, N]: spectral convergence plus log-magnitude L1,
    averaged over the resolutions. Magnitudes are ``sqrt(max(|X|², eps))``, as Parallel WaveGAN's."""
    both = torch.cat([fake, real]).float()  # one transform of both waves per resolution
    total = fake.new_zeros(())
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, device=both.device)
        mag = torch.stft(both, n_fft, hop, win, window, return_complex=True).abs().clamp(min=eps ** 0.5)
        f, r = mag.split(fake.shape[0])
        total = total + torch.linalg.norm(r - f) / torch.linalg.norm(r) + F.l1_loss(f.log(), r.log())
    return total / len(resolutions)


class HiFiGANObjective:
    def __init__(self, mel_weight: float = 45.0, feature_weight: float = 2.0, disc_start: int = 0,
                 period_channels: int = 32, scale_channels: int = 128, stft_weight: float = 0.0,
                 stft_resolutions: list[list[int]] | None = None):
        from tta_core.plugin import UsageError

        if period_channels < 1 or scale_channels < 1:
            raise UsageError("hifigan: period_channels and scale_channels must be at least 1")
        if stft_weight < 0:
            raise UsageError(f"hifigan: stft_weight must be >= 0, got {stft_weight}")
        resolutions = tuple(tuple(int(v) for v in r) for r in (stft_resolutions or STFT_RESOLUTIONS))
        for r in resolutions:
            if len(r) != 3 or min(r) < 1 or r[2] > r[0]:
                raise UsageError(f"hifigan: each of stft_resolutions is [n_fft, hop, win] with win <= n_fft, "
                                 f"got {list(r)}")
        self.stft_weight, self.stft_resolutions = float(stft_weight), resolutions
        self.mel_weight, self.feature_weight, self.disc_start = mel_weight, feature_weight, disc_start
        self.discriminators = Discriminators(period_channels=period_channels, scale_channels=scale_channels)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vocoder_discriminators": self.discriminators}

    def setup(self, ctx) -> None:
        from tta_core.plugin import LogMel, UsageError

        self.ctx = ctx
        name = ctx.roles.get("vocoder")
        if name is None or name not in ctx.trains:
            raise UsageError(f"hifigan trains the recipe's vocoder: list it in stage '{ctx.stage.name}''s trains")
        self.name = name
        self.vocoder = ctx.components[name]
        self.bare = ctx.unwrap(name)
        if not any(p.requires_grad for p in self.bare.parameters()):
            raise UsageError(f"hifigan: the vocoder '{name}' has no trainable weights (griffin_lim has none: use "
                             "type: hifigan)")
        if int(self.bare.sample_rate) != ctx.audio.sample_rate or int(self.bare.hop_length) != ctx.audio.mel.hop:
            raise UsageError(f"hifigan: the vocoder makes {self.bare.hop_length} samples a frame at "
                             f"{self.bare.sample_rate} Hz; the recipe's mel has hop {ctx.audio.mel.hop} at "
                             f"{ctx.audio.sample_rate} Hz")
        self.disc = ctx.components["vocoder_discriminators"]
        self.mel = LogMel(ctx.audio).to(ctx.device)

    def train_dataset(self, ctx) -> Any:
        from tta_core.plugin import training_dataset

        return training_dataset(ctx, mel=True, wave=True)

    def collate(self, items):
        from tta_core.plugin import collate

        return collate(items)

    def parameter_groups(self, ctx) -> dict[str, list]:
        return {"generator": [p for p in self.bare.parameters() if p.requires_grad],
                "discriminator": list(self.discriminators.parameters())}

    def losses(self, batch: dict, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        mel, wave = batch["mel"], batch["wave"]
        if wave.ndim == 3:  # several channels: the vocoder makes the mono mix the mel is of
            wave = wave.mean(1)
        fake = self.vocoder(mel)
        n = min(fake.shape[-1], wave.shape[-1])  # a crop of T mel frames is T * hop samples, or up to a hop more
        fake, wave = fake[..., :n], wave[..., :n]
        mel_fake = self.mel(fake)[..., : mel.shape[-2], :]
        mel_l1 = F.l1_loss(mel_fake, mel)
        loss = self.mel_weight * mel_l1
        out = {"log/mel_l1": mel_l1.detach()}
        if self.stft_weight:
            stft = stft_loss(fake, wave, self.stft_resolutions)
            loss = loss + self.stft_weight * stft
            out["log/stft"] = stft.detach()
        if step >= self.disc_start:
            real_out = self.disc(wave[:, None])
            fake_out = self.disc(fake[:, None])
            adv = sum(torch.mean((1 - score) ** 2) for score, _ in fake_out)
            feat = sum(F.l1_loss(f, r.detach()) for (_, fm), (_, rm) in zip(fake_out, real_out) for f, r in zip(fm, rm))
            loss = loss + adv + self.feature_weight * feat
            # the same scores of the fake: each loss reaches only its own parameters (the trainer
            # differentiates it with respect to them), so no second pass of the detached wave
            d_loss = sum(torch.mean((1 - r) ** 2) + torch.mean(f ** 2)
                         for (r, _), (f, _) in zip(real_out, fake_out))
            out.update({"discriminator": d_loss, "log/g_adv": adv.detach(), "log/feature": feat.detach()})
        out["generator"] = loss
        return out
