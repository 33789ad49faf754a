"""Audio-guided generation on top of any sampler: variation / style transfer (SDEdit) and
inpainting / continuation.

Both work on the latent of an init clip, ``z0 = autoencoder.encode(init)``, through the
stateless sampler contract, so every sampler and every process takes them:

- SDEdit (Meng et al. 2022), as diffusers' img2img: with ``steps`` steps and strength S, the
  last ``round(S * steps)`` steps of the schedule run, from ``alpha z0 + sigma noise`` at
  the level where they start. S = 0 runs no step (the init's reconstruction); S = 1 starts
  from pure noise, exactly as generation without an init does for the same seed.
- Inpainting, as AudioLDM's zero-shot inpainting: the kept region of the latent is replaced,
  at every step, by the original noised to that step's level (with one fixed noise draw),
  and the network's clean estimate there by the original itself, so the kept region follows
  the original's own trajectory and ends exactly on ``z0``; the rest is generated around it.
  Continuation is inpainting of silence appended to a clip. The decoder's output in the kept
  spans is close to, not equal to, the original (its normalisations see the whole latent,
  and a vocoder adds its own error), so the pipeline then puts the original audio back in
  the kept spans, crossfaded over 20 ms inside their edges (``tta_core.sampling.KEEP_FADE``).

Latent time: the first axis after the channels (``[B, C, T', F']`` for mel autoencoders,
``[B, C, L]`` for waveform ones); position k covers input frames (or samples)
``[k n / T', (k + 1) n / T')``, and is kept when its centre lies in a kept span.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import UsageError


def parse_spans(text: str | Sequence[Sequence[float]] | None) -> list[tuple[float, float]]:
    """``"0:1.5,3:4"`` (seconds) -> [(0, 1.5), (3, 4)]; a sequence of pairs is checked as is."""
    if text is None:
        return []
    if isinstance(text, str):
        pairs = []
        for part in text.split(","):
            lo, colon, hi = part.strip().partition(":")
            try:
                if not colon:
                    raise ValueError
                pairs.append((float(lo), float(hi)))
            except ValueError:
                raise UsageError(f"--keep takes START:END spans in seconds, comma-separated (0:1.5,3:4); "
                                 f"got {part.strip()!r}") from None
    else:
        pairs = [(float(a), float(b)) for a, b in text]
    for lo, hi in pairs:
        if not 0 <= lo < hi:
            raise UsageError(f"a kept span runs from START to a later END, both >= 0; got {lo:g}:{hi:g}")
    return pairs


def latent_mask(latent_shape: Sequence[int], spans: Sequence[tuple[float, float]], n: int, rate: float) -> torch.Tensor:
    """Bool [1, *latent_shape] (broadcast over channels and the other axes): True where kept.
    ``n`` input frames (or samples) at ``rate`` per second map onto the latent's time axis."""
    positions = int(latent_shape[1])
    centre = (torch.arange(positions, dtype=torch.float64) + 0.5) * (n / positions) / rate  # seconds
    keep = torch.zeros(positions, dtype=torch.bool)
    for lo, hi in spans:
        keep |= (centre >= lo) & (centre < hi)
    shape = [1, 1, positions] + [1] * (len(latent_shape) - 2)
    return keep.view(shape).expand(1, *latent_shape).clone()


def start_index(steps: int, strength: float) -> int:
    """The schedule row SDEdit starts from: ``steps - round(strength * steps)``."""
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"--strength is between 0 (keep the init audio) and 1 (ignore it), got {strength}")
    return steps - int(round(strength * steps))


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def noised(z0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``alpha z0 + sigma noise`` for a batch of levels."""
    return _bcast(alpha, z0) * z0 + _bcast(sigma, z0) * noise


def inpainting_denoiser(denoise, z0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
    """A DenoiseFn that holds the kept region (``mask``) on the noised original."""

    def fn(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask, noised(z0, noise, alpha, sigma), x)
        return torch.where(mask, z0, denoise(x, alpha, sigma))

    return fn
