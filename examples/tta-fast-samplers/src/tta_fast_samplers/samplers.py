"""Few-step samplers written against tta's stateless sampler contract
(``tta_core.plugin.Sampler``)::

    sample(denoise, x_T, schedule, *, generator=None, callback=None) -> x

``denoise(x, alpha [B], sigma [B])`` is the clean-signal (x0) estimate, ``schedule`` the
process's [S+1, 2] (alpha, sigma) levels from most to least noisy. Nothing else of the
process is known here, so each sampler works with every process (discrete VP, v-diffusion,
linear flow, variance exploding) and every denoiser. The first level may be pure noise
(alpha = 0, v-diffusion's t = 1) and the last clean (sigma = 0); steps that a method
cannot take there fall back to first order, as noted per sampler. Coefficients are
computed once, before the loop, in float64.

With ``lambda = log(alpha / sigma)`` and ``h = lambda_{i+1} - lambda_i``:

- ``dpmpp_2m``: DPM-Solver++ (2M) (Lu et al. 2022), multistep second order in the data
  prediction: ``x_{i+1} = sigma_{i+1}/sigma_i x_i + (alpha_{i+1} - alpha_i sigma_{i+1}/sigma_i) D``
  with ``D = (1 + 1/2r) x0_i - 1/2r x0_{i-1}``, ``r = h_{i-1} / h_i``; first order
  (``D = x0_i``) on the first step and on a last step to sigma = 0. One network call a step.
- ``euler``: Euler's method on the probability-flow ODE in Karras et al.'s coordinates
  (x/alpha against sigma/alpha). For variance-preserving levels its steps are DDIM's (eta 0).
  One call a step.
- ``heun``: Heun's method in the same coordinates (Karras et al. 2022, Algorithm 1 without
  churn): an Euler step, then the average of the slopes at both ends. Two calls a step, one
  on a step from pure noise (no slope can be averaged there) and on a last step to sigma = 0.
- ``pndm``: pseudo linear multistep (PLMS, Liu et al. 2022): Adams-Bashforth combinations of
  the last ``order`` noise estimates (1, 3/2 -1/2, 23/12 -16/12 5/12, 55/24 -59/24 37/24 -9/24),
  lower order while the history fills, carried with the DDIM transfer. One call a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Callback = Callable[[int, int, torch.Tensor], None]


def levels(schedule: torch.Tensor) -> tuple[list[float], list[float]]:
    """(alphas, sigmas) of a schedule as float64 numbers; alpha clamped at 0 (a pure-noise
    level may carry -4e-8 from cos(pi / 2))."""
    if schedule.dim() != 2 or schedule.shape[1] != 2 or schedule.shape[0] < 2:
        raise ValueError(f"a schedule is [S+1, 2] (alpha, sigma) with S >= 1, got {tuple(schedule.shape)}")
    values = schedule.detach().to("cpu", torch.float64)
    alphas = [max(float(a), 0.0) for a in values[:, 0]]
    sigmas = [max(float(s), 0.0) for s in values[:, 1]]
    if any(s <= 0 for s in sigmas[:-1]):
        raise ValueError("every level but the last needs sigma > 0")
    return alphas, sigmas


def _lam(alpha: float, sigma: float) -> float:
    if alpha <= 0:
        return -math.inf
    if sigma <= 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


class _Levels:
    """The schedule's levels as per-batch tensors on x's device, made once."""

    def __init__(self, x: torch.Tensor, alphas: list[float], sigmas: list[float]):
        batch = x.shape[0]
        self.a = [torch.full((batch,), a, device=x.device, dtype=torch.float32) for a in alphas]
        self.s = [torch.full((batch,), s, device=x.device, dtype=torch.float32) for s in sigmas]


def _report(callback: Callback | None, i: int, total: int, x: torch.Tensor) -> None:
    if callback is not None:
        callback(i, total, x)


@torch.no_grad()
def sample_dpmpp_2m(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    alphas, sigmas = levels(schedule)
    steps = len(alphas) - 1
    lam = [_lam(a, s) for a, s in zip(alphas, sigmas)]
    h = [lam[i + 1] - lam[i] for i in range(steps)]
    at = _Levels(x, alphas, sigmas)
    previous = None
    for i in range(steps):
        x0 = denoise(x, at.a[i], at.s[i])
        ratio = sigmas[i + 1] / sigmas[i]
        c_d = alphas[i + 1] - alphas[i] * ratio
        second = previous is not None and sigmas[i + 1] > 0 and math.isfinite(h[i - 1]) and h[i] > 0
        if second:
            w = 1.0 / (2.0 * (h[i - 1] / h[i]))
            d = (1.0 + w) * x0 - w * previous
        else:
            d = x0
        x = ratio * x + c_d * d
        previous = x0
        _report(callback, i, steps, x)
    return x


@torch.no_grad()
def sample_euler(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    alphas, sigmas = levels(schedule)
    steps = len(alphas) - 1
    at = _Levels(x, alphas, sigmas)
    for i in range(steps):
        x0 = denoise(x, at.a[i], at.s[i])
        # x/alpha moves along d = (x/alpha - x0) / (sigma/alpha) = eps: written in x, the step
        # is x0 at the next level plus the current noise rescaled, finite at alpha = 0 too
        x = alphas[i + 1] * x0 + (sigmas[i + 1] / sigmas[i]) * (x - alphas[i] * x0)
        _report(callback, i, steps, x)
    return x


@torch.no_grad()
def sample_heun(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    alphas, sigmas = levels(schedule)
    steps = len(alphas) - 1
    at = _Levels(x, alphas, sigmas)
    for i in range(steps):
        a, s, a1, s1 = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        x0 = denoise(x, at.a[i], at.s[i])
        eps = (x - a * x0) / s
        euler = a1 * x0 + s1 * eps
        if a <= 0 or s1 <= 0:  # from pure noise, or onto the clean signal: the Euler step
            x = euler
        else:
            x0_next = denoise(euler, at.a[i + 1], at.s[i + 1])
            eps_next = (euler - a1 * x0_next) / s1
            # x/alpha += (sigma_{i+1}/alpha_{i+1} - sigma_i/alpha_i) * mean slope, in x
            x = (a1 / a) * x + (s1 - a1 * s / a) * 0.5 * (eps + eps_next)
        _report(callback, i, steps, x)
    return x


#: Adams-Bashforth weights, newest estimate first, per order
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def sample_pndm(denoise: Callable, x: torch.Tensor, schedule: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                order: int = 4) -> torch.Tensor:
    alphas, sigmas = levels(schedule)
    steps = len(alphas) - 1
    at = _Levels(x, alphas, sigmas)
    history: list[torch.Tensor] = []
    for i in range(steps):
        a, s, a1, s1 = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        x0 = denoise(x, at.a[i], at.s[i])
        eps = (x - a * x0) / s
        history = [eps, *history][:order]
        if a <= 0:  # pure noise: no x0 can be recovered from a combined estimate; DDIM's step
            x = a1 * x0 + s1 * eps
        else:
            combined = sum(w * e for w, e in zip(_AB[len(history)], history))
            x = (a1 / a) * x + (s1 - a1 * s / a) * combined
        _report(callback, i, steps, x)
    return x


# -- registry factories ------------------------------------------------------------------------


@dataclass(frozen=True)
class DPMSolverPP2M:
    """DPM-Solver++ (2M): second-order multistep, one network call a step (deterministic)."""

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_dpmpp_2m(denoise, x_T, schedule, generator=generator, callback=callback)


@dataclass(frozen=True)
class Euler:
    """Euler on the probability-flow ODE (Karras et al.): DDIM's steps (deterministic)."""

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_euler(denoise, x_T, schedule, generator=generator, callback=callback)


@dataclass(frozen=True)
class Heun:
    """Heun (Karras et al. 2022): second order, two network calls a step (deterministic)."""

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_heun(denoise, x_T, schedule, generator=generator, callback=callback)


@dataclass(frozen=True)
class PNDM:
    """PNDM's pseudo linear multistep (PLMS). order: 1 (DDIM) to 4 (the paper's)."""

    order: int = 4

    def __post_init__(self) -> None:
        if self.order not in _AB:
            raise ValueError(f"pndm order is 1, 2, 3 or 4, got {self.order}")

    def __call__(self, denoise, x_T, schedule, *, generator=None, callback=None):
        return sample_pndm(denoise, x_T, schedule, generator=generator, callback=callback, order=self.order)
