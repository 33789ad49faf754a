"""Classifier-free guidance, applied in ``denoise`` so that every sampler gets it.

The guided network output is ``uncond + scale * (cond - uncond)`` on the raw network output
(noise or v, whichever the process trains), exactly where diffusers' pipelines combine
them; the process's own ``denoiser`` then turns it into an x0 estimate, with whatever
preconditioning it applies around its network. Because x0 is affine in the network
output at a fixed level, this equals guiding x0, except for ``rescale``, which is defined on
the raw output as diffusers' ``rescale_noise_cfg`` has it.

- One network call per step: the conditional and unconditional halves go through as one
  batch (``Conditioning.cat``), built once per batch, not per step.
- ``scale == 1`` is the conditional forward alone; the unconditional half is not computed.
- A negative prompt is the unconditional half: the caller encodes it instead of
  ``conditioner.null()``.
- ``interval = (lo, hi)``: guide only where the level's sigma is in [lo, hi] (sigma of the
  (alpha, sigma) schedule: in [0, 1] for the built-in processes, up to sigma_max for a
  variance-exploding one); elsewhere the conditional output is used. Decided on the device
  per item, with no host sync; both halves are still computed at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..interfaces import Conditioning


@dataclass(frozen=True)
class Guidance:
    """scale: the CFG weight (1 = no guidance). rescale: phi of "Common Diffusion Noise
    Schedules and Sample Steps are Flawed" (0 = off; 0.7 is the paper's value), which pulls
    the guided output's per-item std back to the conditional one's. interval: the sigma band
    (lo, hi) where guidance applies, or None for every level."""

    scale: float = 1.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        values = (self.scale, self.rescale, *(self.interval or ()))
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"guidance settings must be finite numbers, got scale {self.scale}, "
                             f"rescale {self.rescale}, interval {self.interval}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"guidance rescale is between 0 and 1, got {self.rescale}")
        if self.interval is not None:
            lo, hi = self.interval
            if not lo <= hi:
                raise ValueError(f"guidance interval (lo, hi) needs lo <= hi, got {self.interval}")

    @property
    def active(self) -> bool:
        return self.scale != 1.0


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg``: blend the guided output with a copy rescaled to the
    conditional output's per-item standard deviation."""
    dims = list(range(1, cond.dim()))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def guided_denoiser(process, net: Callable, cond: Conditioning, uncond: Conditioning | None,
                    guidance: Guidance) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``denoise(x, alpha, sigma) -> x0`` with classifier-free guidance around ``net``.

    ``cond``/``uncond``: [B] conditionings for the B items of x (``uncond`` from
    ``conditioner.null(B)`` or from encoding negative prompts); ``uncond`` is unused, and
    may be None, when ``guidance.scale == 1``.

    The guidance lives in a network, ``(x, t, cond) -> combined raw output``, that the
    process's own ``denoiser`` drives: whatever the process does around its network (EDM's
    input scaling c_in and noise embedding c_noise, a flow's time map) applies to the
    guided output exactly as to a plain one. That network ignores the conditioning the
    process hands it and runs both halves; the sigma of the ``interval`` band is the level
    the sampler asked for, taken before the process sees it.
    """
    if not guidance.active:
        return process.denoiser(net, cond)
    if uncond is None:
        raise ValueError("classifier-free guidance with scale != 1 needs the unconditional conditioning")
    if uncond.batch_size != cond.batch_size:
        raise ValueError(f"uncond has batch {uncond.batch_size}, cond {cond.batch_size}")
    both = Conditioning.cat([uncond, cond])  # diffusers' order: unconditional half first
    scale, phi, interval = guidance.scale, guidance.rescale, guidance.interval
    level: list[torch.Tensor] = []  # the current call's sigma, for the interval

    def guided_net(x: torch.Tensor, t: torch.Tensor, _cond: Conditioning) -> torch.Tensor:
        out_u, out_c = net(torch.cat([x, x]), torch.cat([t, t]) if t.dim() else t, both).chunk(2)
        out = out_u + scale * (out_c - out_u)
        if phi > 0:
            out = rescale_noise_cfg(out, out_c, phi)
        if interval is not None:
            sigma = level[-1]
            inside = (sigma >= interval[0]) & (sigma <= interval[1])
            out = torch.where(inside.reshape(-1, *([1] * (x.dim() - 1))), out, out_c)
        return out

    inner = process.denoiser(guided_net, cond)

    def denoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level[:] = [sigma]
        return inner(x, alpha, sigma)

    return denoise
