"""``diffae`` objective: train a diffusion autoencoder (encoder and decoder together) on
cropped training waves, as audio-diffusion-pytorch's ``DiffusionAE`` trains."""

from __future__ import annotations

from typing import Any

import torch

from tta_core.plugin import UsageError, channels_problem, with_channels


class DiffAETraining:
    def __init__(self, validate_clips: int = 4, validate_steps: int | None = None):
        self.validate_clips, self.validate_steps = validate_clips, validate_steps

    def setup(self, ctx: Any) -> None:
        self.name = ctx.roles.get("autoencoder")
        if self.name is None or self.name not in ctx.trains:
            raise UsageError(f"stage '{ctx.stage.name}': the diffae objective trains the recipe's autoencoder; "
                             "list it in trains")
        if getattr(ctx.unwrap(self.name), "domain", None) != "waveform":
            raise UsageError(f"diffae trains a waveform autoencoder; '{self.name}' works on mels")
        problem = channels_problem(ctx.unwrap(self.name), ctx.audio.channels)
        if problem:
            raise UsageError(problem)
        self.ae = ctx.components[self.name]  # wrapped when distributed: call it, do not reach inside

    def train_dataset(self, ctx: Any) -> Any:
        from tta_core.plugin import training_dataset

        return training_dataset(ctx, mel=False, wave=True)

    def collate(self, items):
        from tta_core.plugin import collate

        return collate(items)

    def parameter_groups(self, ctx: Any) -> dict[str, list]:
        return {"main": [p for p in ctx.unwrap(self.name).parameters() if p.requires_grad]}

    def losses(self, batch: dict, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"main": self.ae(with_channels(batch["wave"]), generator=generator)}

    @torch.no_grad()
    def validate(self, ctx: Any, out_dir: Any) -> dict:
        """Reconstruct a few training clips (evaluation crops) with the current (EMA, when
        kept) weights: original and reconstruction WAVs, and the reconstruction's spectrogram."""
        from tta_core.plugin import collate, save_spectrogram, training_dataset, write_audio

        data = training_dataset(ctx, mel=False, wave=True, train=False)
        batch = collate([data[i] for i in range(min(self.validate_clips, len(data)))])
        if batch is None:
            return {}
        ae = ctx.ema.get(self.name, ctx.unwrap(self.name))
        was_training = ae.training
        ae.eval()
        try:
            wave = with_channels(batch["wave"].to(ctx.device))
            generator = torch.Generator(ctx.device).manual_seed(0)
            recon = ae.decode(ae.encode(wave), steps=self.validate_steps, generator=generator)[..., : wave.shape[-1]]
        finally:
            ae.train(was_training)
        out_dir.mkdir(parents=True, exist_ok=True)
        rate = ctx.audio.sample_rate
        for i, (a, b) in enumerate(zip(wave.cpu(), recon.float().cpu())):  # [C, N] each
            write_audio(out_dir / f"{i:02d}-original.wav", a, rate)
            write_audio(out_dir / f"{i:02d}-reconstruction.wav", b, rate)
            save_spectrogram(out_dir / f"{i:02d}-reconstruction.png", b, rate, ctx.audio,
                             f"reconstruction of {batch['id'][i]}")
        return {"wave_l1": float((recon - wave).abs().mean())}
