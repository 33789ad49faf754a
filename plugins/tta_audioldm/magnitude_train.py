"""``linear_spectrogram``: trains a ``learned_griffin_lim`` vocoder's network to predict the
linear STFT magnitude of a clip from its log-mel, as Tacotron trains its post-net:

    L1(log Ŝ, log S)  +  convergence_weight * ||S - Ŝ||_F / ||S||_F

S = |STFT| of the wave crop with the recipe's n_fft, hop and window, one frame centred on
every hop (the frames Griffin-Lim rebuilds), floored at the log-mel's floor; Ŝ the network's.
The spectral-convergence term (Parallel WaveGAN's) weighs the loud bins, where the partials
are. The first and last ``edge_frames`` frames of a crop are left out of both: their STFT
window reaches past the crop, where the mel (read from the whole clip) still sees the clip.
No discriminator and no waveform: a step costs a few frame-rate convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class LinearSpectrogramObjective:
    def __init__(self, convergence_weight: float = 1.0, edge_frames: int | None = None):
        from tta_core.plugin import UsageError

        if convergence_weight < 0:
            raise UsageError(f"linear_spectrogram: convergence_weight must be >= 0, got {convergence_weight}")
        if edge_frames is not None and edge_frames < 0:
            raise UsageError(f"linear_spectrogram: edge_frames must be >= 0, got {edge_frames}")
        self.convergence_weight, self.edge_frames = float(convergence_weight), edge_frames

    def setup(self, ctx) -> None:
        from tta_core.plugin import UsageError

        name = ctx.roles.get("vocoder")
        if name is None or name not in ctx.trains:
            raise UsageError(f"linear_spectrogram trains the recipe's vocoder: list it in stage "
                             f"'{ctx.stage.name}''s trains")
        bare = ctx.unwrap(name)
        if not hasattr(bare, "magnitude"):
            raise UsageError(f"linear_spectrogram trains a vocoder that predicts a linear magnitude "
                             f"(type: learned_griffin_lim); '{name}' is a {type(bare).__name__}")
        m = ctx.audio.mel
        if bare.audio.mel != m or bare.audio.sample_rate != ctx.audio.sample_rate:
            raise UsageError(f"linear_spectrogram: the vocoder '{name}' was built for other mel settings than "
                             f"the stage's audio section")
        edge = self.edge_frames if self.edge_frames is not None else -(-m.n_fft // (2 * m.hop))
        frames = ctx.audio.num_samples // m.hop
        if frames <= 2 * edge:
            raise UsageError(f"linear_spectrogram: crops of {frames} frames leave nothing once {edge} frames at "
                             f"each end are left out: raise the stage's duration or lower edge_frames")
        self.vocoder, self.bare, self.edge, self.audio = ctx.components[name], bare, edge, ctx.audio

    def train_dataset(self, ctx) -> Any:
        from tta_core.plugin import training_dataset

        return training_dataset(ctx, mel=True, wave=True)

    def collate(self, items):
        from tta_core.plugin import collate

        return collate(items)

    def parameter_groups(self, ctx) -> dict[str, list]:
        return {"main": [p for p in self.bare.parameters() if p.requires_grad]}

    def target(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """wave [B, N] -> its linear magnitude [B, n_freq, frames], a frame centred on every hop."""
        m = self.audio.mel
        window = torch.hann_window(m.win, device=wave.device)
        spec = torch.stft(wave.float(), m.n_fft, m.hop, m.win, window, center=True, return_complex=True).abs()
        return spec[..., :frames]

    def losses(self, batch: dict, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        from tta_core.plugin import LOG_FLOOR

        mel, wave = batch["mel"], batch["wave"]
        if wave.ndim == 3:  # several channels: the vocoder makes the mono mix the mel is of
            wave = wave.mean(1)
        predicted = self.vocoder(mel, output="magnitude").float()
        frames = predicted.shape[-1]
        keep = slice(self.edge, frames - self.edge)
        real = self.target(wave, frames).clamp(min=LOG_FLOOR)[..., keep]
        predicted = predicted[..., keep]
        log_l1 = F.l1_loss(predicted.clamp(min=LOG_FLOOR).log(), real.log())
        convergence = torch.linalg.norm(real - predicted) / torch.linalg.norm(real)
        return {"main": log_l1 + self.convergence_weight * convergence,
                "log/log_l1": log_l1.detach(), "log/convergence": convergence.detach()}
