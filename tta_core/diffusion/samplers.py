"""Samplers: one stateless signature, k-diffusion style.

    sample(denoise, x_T, schedule, *, generator=None, callback=None) -> x at the last level

``denoise(x, alpha [B], sigma [B]) -> x0 estimate`` comes from a process (with guidance
applied around it); ``schedule`` is the process's [S+1, 2] (alpha, sigma) tensor, most to
least noisy. Each sampler calls ``denoise`` once per step, keeps any memory in local
variables, and returns x at the schedule's last level (the clean signal when that level is
(1, 0)). The coefficients for every step are computed once before the loop, on x's device,
so a step is the network call plus a few tensor operations: no host-device syncs.

Noise (DDPM, DDIM with eta > 0) is drawn once per step after the network call, as
``torch.randn(x.shape, generator=generator)`` on the generator's device: the same draws
diffusers' DDPMScheduler.step / DDIMScheduler.step make with the same generator.

Samplers assume nothing of the levels beyond ``x_t = alpha x0 + sigma eps``: variance
preserving, a linear flow (alpha = 1 - sigma, starting at alpha = 0) and variance exploding
(alpha = 1, sigma up to 80) schedules all run through each. :func:`initial_noise` draws the
x_T a schedule starts from (unit noise scaled to its first level).

The registry holds small frozen dataclasses (:class:`DDPM`, :class:`DDIM`, :class:`VSampler`)
whose fields are the sampler's options, so a recipe node ``{type: ddim, eta: 0.5}`` builds a
sampler; the maths is in the plain functions ``sample_*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .processes import _to_device, draw_normal

Callback = Callable[[int, int, torch.Tensor], None]


def _levels(x: torch.Tensor, schedule: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if schedule.dim() != 2 or schedule.shape[1] != 2 or schedule.shape[0] < 2:
        raise ValueError(f"a schedule is [S+1, 2] (alpha, sigma) with S >= 1, got {tuple(schedule.shape)}")
    schedule = schedule.to(device=x.device, dtype=torch.float32)
    return schedule[:, 0], schedule[:, 1]


def _posterior(alpha: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step i -> i+1: the variance of x_t given x_s (sigma^2_{t|s}) and of the posterior
    q(x_s | x_t, x_0), for any (alpha, sigma) levels (Kingma et al. 2021, VDM eq. 2-3).
    For a VP schedule these are diffusers' beta_t and (1-ab_prev)/(1-ab_t) * beta_t."""
    a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    var_ts = s_t**2 - (a_t / a_s) ** 2 * s_s**2
    return var_ts, var_ts * s_s**2 / s_t**2


def _report(callback: Callback | None, i: int, total: int, x: torch.Tensor) -> None:
    if callback is not None:
        callback(i, total, x)


@torch.no_grad()
def sample_ddpm(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020): x_s ~ q(x_s | x_t, x0_hat), the posterior with
    diffusers' ``fixed_small`` variance. The last step adds noise too, scaled by a variance
    that is ~0 when the chain ends at sigma 0."""
    alpha, sigma = _levels(x, schedule)
    steps, batch = alpha.shape[0] - 1, x.shape[0]
    var_ts, var_post = _posterior(alpha, sigma)
    s_t2 = sigma[:-1] ** 2
    c_x = (alpha[:-1] / alpha[1:]) * sigma[1:] ** 2 / s_t2  # sqrt(alpha_t) (1-ab_prev)/(1-ab_t)
    c_x0 = alpha[1:] * var_ts / s_t2  # sqrt(ab_prev) beta_t / (1-ab_t)
    std = var_post.clamp(min=0).sqrt()
    for i in range(steps):
        x0 = denoise(x, alpha[i].expand(batch), sigma[i].expand(batch))
        x = c_x0[i] * x0 + c_x[i] * x + std[i] * draw_normal(x, generator)
        _report(callback, i, steps, x)
    return x


@torch.no_grad()
def sample_ddim(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat
    + std * noise, with std = eta * (the DDPM posterior's std). eta 0 is deterministic;
    eta 1 has DDPM's variance."""
    alpha, sigma = _levels(x, schedule)
    steps, batch = alpha.shape[0] - 1, x.shape[0]
    _, var_post = _posterior(alpha, sigma)
    var = eta**2 * var_post.clamp(min=0)
    c_eps = (sigma[1:] ** 2 - var).clamp(min=0).sqrt()
    std = var.sqrt()
    for i in range(steps):
        x0 = denoise(x, alpha[i].expand(batch), sigma[i].expand(batch))
        eps = (x - alpha[i] * x0) / sigma[i]
        x = alpha[i + 1] * x0 + c_eps[i] * eps
        if eta > 0:
            x = x + std[i] * draw_normal(x, generator)
        _report(callback, i, steps, x)
    return x


def _vp_radius(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """r = sqrt(alpha^2 + sigma^2) per level: dividing a level (and x) by r gives the
    variance-preserving level with the same signal-to-noise ratio. Snapped to exactly 1
    where a level is variance preserving up to float32 rounding, so those levels take the
    reference's arithmetic bit for bit."""
    r = (alpha**2 + sigma**2).sqrt()
    return torch.where((r - 1).abs() < 1e-6, torch.ones_like(r), r)


@torch.no_grad()
def sample_v(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
             generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """audio-diffusion-pytorch's VSampler: rotate along the quarter circle through the
    velocity, x0_hat = alpha x - sigma v, eps_hat = sigma x + alpha v, then
    x_s = alpha_s x0_hat + sigma_s eps_hat.

    The rotation needs alpha^2 + sigma^2 = 1. A level off the circle (a linear flow, a
    variance-exploding process) is mapped to the variance-preserving level with its
    signal-to-noise ratio, (x, alpha, sigma) / r with r = sqrt(alpha^2 + sigma^2), rotated
    there, and scaled back by the next level's r. On variance-preserving schedules r is 1
    and this is the reference's arithmetic; on any schedule it is DDIM with eta 0 in exact
    arithmetic. Deterministic: ``generator`` is accepted for the common signature and unused.
    """
    alpha, sigma = _levels(x, schedule)
    steps, batch = alpha.shape[0] - 1, x.shape[0]
    r = _vp_radius(alpha, sigma)
    a_vp, s_vp = alpha / r, sigma / r
    # one check before the loop: on a variance-preserving schedule the two rescalings are
    # the identity, and each would cost a pass over x every step
    try:
        on_circle = bool((r == 1).all())
    except RuntimeError:  # levels without data (a memory estimate on fake tensors): rescaling is right on any schedule
        on_circle = False
    for i in range(steps):
        x0 = denoise(x, alpha[i].expand(batch), sigma[i].expand(batch))
        x_vp = x if on_circle else x / r[i]
        v = (a_vp[i] * x_vp - x0) / s_vp[i]
        eps = s_vp[i] * x_vp + a_vp[i] * v
        x = a_vp[i + 1] * x0 + s_vp[i + 1] * eps
        if not on_circle:
            x = r[i + 1] * x
        _report(callback, i, steps, x)
    return x


def start_scale(schedule: torch.Tensor) -> float:
    """r0 = sqrt(alpha_0^2 + sigma_0^2) of a schedule's first row: the spread of unit-variance
    data noised to that level (sigma_0 for a variance-exploding process, 1 for a
    variance-preserving one). Within 1e-4 of 1 it is exactly 1, so a variance-preserving
    schedule starts from the unit noise diffusers' pipelines start from (``init_noise_sigma`` 1)."""
    if schedule.dim() != 2 or schedule.shape[1] != 2 or schedule.shape[0] < 1:
        raise ValueError(f"a schedule is [S+1, 2] (alpha, sigma), got {tuple(schedule.shape)}")
    alpha0, sigma0 = (float(v) for v in schedule[0])
    r0 = math.hypot(alpha0, sigma0)
    if not (math.isfinite(r0) and r0 > 0):
        raise ValueError(f"the schedule's first level ({alpha0}, {sigma0}) has no spread to draw noise at")
    return 1.0 if abs(r0 - 1.0) < 1e-4 else r0


def initial_noise(schedule: torch.Tensor, shape: Sequence[int], *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T for sampling ``schedule`` from its first row: standard normal noise of ``shape``
    times r0 = sqrt(alpha_0^2 + sigma_0^2), the spread of unit-variance data noised to that
    level (sigma_0 for a variance-exploding process, 1 for a variance-preserving one).

    With a generator the noise is drawn on the generator's device and moved to ``device``
    (diffusers' ``randn_tensor``), so a CPU generator gives the same numbers everywhere.
    A variance-preserving first row gives exactly the unit noise (r0 within 1e-4 of 1 is
    taken as 1), which is what diffusers' pipelines start from (``init_noise_sigma`` 1).
    """
    r0 = start_scale(schedule)
    target = torch.device(device) if device is not None else (generator.device if generator is not None
                                                               else torch.device("cpu"))
    if generator is None:
        noise = torch.randn(tuple(shape), device=target, dtype=dtype)
    else:
        noise = _to_device(torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype),
                           target)
    return noise if r0 == 1.0 else noise * r0


# -- registry factories: the options of each sampler ---------------------------------------------


@dataclass(frozen=True)
class DDPM:
    """Ancestral DDPM sampling (stochastic: draws noise every step)."""

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_ddpm(denoise, x_T, schedule, generator=generator, callback=callback)


@dataclass(frozen=True)
class DDIM:
    """DDIM. eta: 0 deterministic (the usual choice), 1 as noisy as DDPM."""

    eta: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"ddim eta is between 0 and 1, got {self.eta}")

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_ddim(denoise, x_T, schedule, generator=generator, callback=callback, eta=self.eta)


@dataclass(frozen=True)
class VSampler:
    """audio-diffusion-pytorch's VSampler (deterministic)."""

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_v(denoise, x_T, schedule, generator=generator, callback=callback)
