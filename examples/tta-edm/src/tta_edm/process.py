"""EDM's process (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"), written against tta's process contract (``tta_core.plugin.Process``).

Variance exploding: ``x_t = x0 + sigma eps`` (alpha = 1), sigma in [sigma_min, sigma_max].
The network F never sees x_t itself. With sigma_data the data's spread, the denoiser is

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

so F's input and target both have unit variance at every noise level (Table 1, "ours").
Training draws ln(sigma) ~ N(P_mean, P_std^2) and weights the error of D by
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which makes it the plain
squared error of F against its target (x0 - c_skip x_t) / c_out. N sampling steps visit
Karras et al.'s rho = 7 schedule from sigma_max to sigma_min, then sigma 0.

Because the scaling c_in happens inside :meth:`EDM.denoiser`, tta's classifier-free
guidance (which drives the network through the process's denoiser) keeps it.

A level from elsewhere (alpha != 1) is read as its variance-exploding equivalent,
x / alpha at sigma / alpha, the same signal-to-noise ratio.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from tta_core.plugin import TrainingPair


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normal draws; with a generator, on its device and then moved, so a CPU generator gives
    the same numbers on every device."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


class EDM:
    """EDM's preconditioned variance-exploding process.

    sigma_min, sigma_max: the noise range of sampling (the paper's 0.002 and 80).
    sigma_data: the spread of the data (0.5, the paper's, for data scaled to about [-1, 1]).
    rho: the sampling schedule's warp (7: steps concentrate at low noise).
    p_mean, p_std: ln(sigma) ~ N(p_mean, p_std^2) in training (-1.2 and 1.2).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 rho: float = 7.0, p_mean: float = -1.2, p_std: float = 1.2):
        values = {"sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data, "rho": rho,
                  "p_mean": p_mean, "p_std": p_std}
        bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"edm settings must be finite numbers, got {', '.join(bad)}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"edm needs 0 < sigma_min < sigma_max (0.002 and 80 in the paper), got "
                             f"{sigma_min} and {sigma_max}")
        for name in ("sigma_data", "rho", "p_std"):
            if not values[name] > 0:
                raise ValueError(f"edm {name} must be positive, got {values[name]}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.rho, self.p_mean, self.p_std = float(rho), float(p_mean), float(p_std)

    # -- preconditioning --------------------------------------------------------------------
    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at noise levels ``sigma``. At sigma 0 (the clean end of
        the schedule) c_out is 0, so D is x itself, and c_noise is kept finite for the network."""
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        c_noise = sigma.clamp(min=torch.finfo(torch.float32).tiny).log() / 4
        return sd2 / total, sigma * self.sigma_data / total.sqrt(), total.rsqrt(), c_noise

    def schedule(self, steps: int) -> torch.Tensor:
        """[steps + 1, 2] (1, sigma): Karras et al.'s eq. 5 from sigma_max to sigma_min, then 0."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigma = torch.cat([(hi + ramp * (lo - hi)) ** self.rho, torch.zeros(1, dtype=torch.float64)])
        return torch.stack([torch.ones_like(sigma), sigma], dim=1).float()

    def net_time(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """c_noise = ln(sigma) / 4 of the level's variance-exploding sigma."""
        return self.scalings(sigma / alpha)[3]

    def to_x0(self, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D = c_skip x + c_out F, for F's output at the level (alpha, sigma)."""
        a = _bcast(alpha, x)
        c_skip, c_out, _, _ = self.scalings(_bcast(sigma / alpha, x))
        return c_skip * (x / a) + c_out * output

    def denoiser(self, net: Callable, cond: Any) -> Callable:
        """``denoise(x, alpha, sigma) -> x0``: one network call, on c_in x at c_noise."""
        def denoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            ve = sigma / alpha
            c_skip, c_out, c_in, _ = self.scalings(_bcast(ve, x))
            x = x / _bcast(alpha, x)
            return c_skip * x + c_out * net(c_in * x, self.scalings(ve)[3], cond)
        return denoise

    # -- training -----------------------------------------------------------------------------
    def training_pair(self, x0: torch.Tensor, *, generator: torch.Generator | None = None) -> TrainingPair:
        """Draw ln(sigma) per item, then the noise (in that order); the target is F's."""
        n = x0.shape[0]
        sigma = (self.p_mean + self.p_std * _randn((n,), generator, x0.device)).exp()
        noise = _randn(tuple(x0.shape), generator, x0.device, x0.dtype)
        s = _bcast(sigma, x0)
        x_t = x0 + s * noise
        c_skip, c_out, _, c_noise = self.scalings(s)
        target = (x0 - c_skip * x_t) / c_out
        return TrainingPair(x_t, c_noise.reshape(-1), target, torch.ones_like(sigma), sigma, noise)

    def loss(self, net: Callable, x0: torch.Tensor, cond: Any, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """lambda(sigma) |D(x_t; sigma) - x0|^2, averaged: EDM's training loss."""
        pair = self.training_pair(x0, generator=generator)
        s = _bcast(pair.sigma, x0)
        c_skip, c_out, c_in, _ = self.scalings(s)
        denoised = c_skip * pair.x_t + c_out * net(c_in * pair.x_t, pair.t, cond).float()
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        return (weight * (denoised - x0.float()) ** 2).mean()

    def __repr__(self) -> str:
        return (f"EDM(sigma in [{self.sigma_min}, {self.sigma_max}], sigma_data={self.sigma_data}, "
                f"rho={self.rho})")
