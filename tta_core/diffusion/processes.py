"""Diffusion processes: the noise schedule and the parameterisation a denoiser is trained with.

A process turns a raw network ``net(x_t, t, cond)`` into the "predict the clean signal"
function samplers call (``denoise(x, alpha, sigma)``), gives training pairs and the loss, and
the sampling schedule for N steps, so training and sampling cannot disagree about eps/v/x0
(k-diffusion's ``layers.Denoiser``).

Every process speaks one convention: ``x_t = alpha * x_0 + sigma * eps``. A schedule is a
plain ``[S+1, 2]`` float32 tensor of (alpha, sigma), most to least noisy. Samplers only see
those numbers; the process maps a level back to its network's time input with
:meth:`net_time` (an exact inverse for the levels its own schedules hold), the way
k-diffusion's ``DiscreteSchedule.sigma_to_t`` does. So a sampler needs nothing from the
process but the denoise function, and any sampler runs any process.

The built-in processes:

- :class:`VPDiscrete`: diffusers' 1000-step DDPM/DDIM scheduler maths (AudioLDM, Amphion);
  variance preserving (``alpha**2 + sigma**2 == 1``).
- :class:`VDiffusion`: audio-diffusion-pytorch's continuous cos/sin v-diffusion (Mousai);
  variance preserving.
- :class:`RectifiedFlow`: the linear flow ``x_t = (1 - t) x0 + t eps`` with a velocity
  target (as SD3 and current text-to-audio models train), SD3's time shift and logit-normal
  training times; ``alpha + sigma == 1``, not variance preserving.

Nothing outside a process assumes a family: samplers work on any (alpha, sigma) levels, a
variance-exploding process (alpha = 1, sigma up to 80, as EDM) included, and sampling starts
from noise scaled to the first level (``tta_core.diffusion.initial_noise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Callable, Literal

import torch
import torch.nn.functional as F

from ..recipe import Range

if TYPE_CHECKING:
    from ..interfaces import Conditioning, DenoiseFn

Prediction = Literal["epsilon", "v", "sample"]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-item [B] (or scalar) level shaped to broadcast against ``like`` [B, ...]."""
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def _draw_uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.rand(n, device=device)
    return _to_device(torch.rand(n, generator=generator, device=generator.device), device)


def _draw_standard_normal(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randn(n, device=device)
    return _to_device(torch.randn(n, generator=generator, device=generator.device), device)


def draw_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise shaped like ``like``. With a generator, drawn on the generator's device
    and moved, as diffusers' ``randn_tensor`` does, so a CPU generator gives the same numbers
    on every device."""
    if generator is None:
        return torch.randn_like(like)
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return _to_device(noise, like.device)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device without waiting for the device: a copy from pinned memory is
    asynchronous (a plain ``.to`` from pageable memory would sync every sampling step)."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass(frozen=True)
class TrainingPair:
    """One training example of a process: the net sees ``(x_t, t)``, and should output
    ``target``. ``alpha``/``sigma`` [B] are the levels, ``noise`` the eps that was added."""

    x_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor


def _gamma(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"snr_gamma must be positive (5 is the usual choice), got {value}")
    return None if value is None else float(value)


class _Process:
    """What every process shares: the parameterisation maths and the training loss.

    Subclasses give ``schedule(steps)``, ``net_time(alpha, sigma)`` and ``_draw_levels``.
    """

    prediction: Prediction

    # -- parameterisation -----------------------------------------------------------------
    def to_x0(self, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The clean-signal estimate from a raw network output at level (alpha, sigma).

        v = alpha * eps - sigma * x0 (Salimans & Ho), so x0 = alpha * x - sigma * v for a
        variance-preserving level.
        """
        a, s = _bcast(alpha, x), _bcast(sigma, x)
        if self.prediction == "epsilon":
            return (x - s * output) / a
        if self.prediction == "v":
            return a * x - s * output
        return output

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for ``x_t = alpha * x0 + sigma * noise``."""
        a, s = _bcast(alpha, x0), _bcast(sigma, x0)
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "v":
            return a * noise - s * x0
        return x0

    def denoiser(self, net: Callable, cond: "Conditioning") -> "DenoiseFn":
        """``denoise(x, alpha, sigma) -> x0`` for samplers: one network call per use."""
        def denoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.to_x0(net(x, self.net_time(alpha, sigma), cond), x, alpha, sigma)
        return denoise

    # -- training ---------------------------------------------------------------------------
    def training_pair(self, x0: torch.Tensor, *, generator: torch.Generator | None = None) -> TrainingPair:
        """Draw a level per item, then the noise (in that order), and noise ``x0``."""
        t, alpha, sigma = self._draw_levels(x0.shape[0], generator, x0.device)
        noise = draw_normal(x0, generator)
        a, s = _bcast(alpha, x0), _bcast(sigma, x0)
        x_t = a * x0 + s * noise
        return TrainingPair(x_t, t, self.target(x0, noise, alpha, sigma), alpha, sigma, noise)

    snr_gamma: float | None = None

    def loss(self, net: Callable, x0: torch.Tensor, cond: "Conditioning", *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error between the network's output and the target, over a fresh
        training pair (one level per item); with ``snr_gamma``, each item's error weighted
        by Min-SNR-gamma (Hang et al. 2023, as diffusers' training scripts' ``--snr_gamma``)."""
        pair = self.training_pair(x0, generator=generator)
        out = net(pair.x_t, pair.t, cond)
        if self.snr_gamma is None:
            return F.mse_loss(out, pair.target)
        per_item = F.mse_loss(out.float(), pair.target.float(), reduction="none").mean(dim=tuple(range(1, out.dim())))
        return (per_item * self.loss_weights(pair.alpha, pair.sigma)).mean()

    def loss_weights(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights [B] for levels (alpha, sigma): min(SNR, gamma) divided by
        SNR for epsilon prediction, by SNR + 1 for v, by 1 for the clean sample."""
        snr = alpha.float() ** 2 / (sigma.float() ** 2).clamp(min=1e-20)
        weights = snr.clamp(max=self.snr_gamma)
        if self.prediction == "epsilon":
            return weights / snr
        if self.prediction == "v":
            return weights / (snr + 1)
        return weights

    def _draw_levels(self, n: int, generator: torch.Generator | None, device: torch.device):
        raise NotImplementedError


# -- discrete variance-preserving (DDPM) --------------------------------------------------------

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
Spacing = Literal["leading", "linspace", "trailing"]


def make_betas(schedule: str, steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """The betas diffusers' schedulers build, in float32 (so alphas_cumprod match theirs)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    if schedule == "scaled_linear":  # latent diffusion's: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal, diffusers' "squaredcos_cap_v2"
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                             for i in range(steps)], dtype=torch.float32)
    raise ValueError(f"unknown beta schedule '{schedule}': linear, scaled_linear or cosine")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last level is pure noise (Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Algorithm 1; diffusers' ``rescale_betas_zero_snr``):
    sqrt(alphabar) is shifted so its last value is 0 and scaled so its first is unchanged."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


class VPDiscrete(_Process):
    """Discrete-time DDPM: ``num_train_timesteps`` levels with alpha = sqrt(alphabar_t).

    The network receives the integer timestep t (as a float tensor), like diffusers' UNets.

    betas: ``linear``, ``scaled_linear`` (latent diffusion; AudioLDM uses 0.0015 -> 0.0195,
        Amphion 0.00085 -> 0.012) or ``cosine`` (diffusers' ``squaredcos_cap_v2``; ignores
        beta_start/beta_end).
    prediction: what the network outputs: ``epsilon``, ``v`` (diffusers' v_prediction) or
        ``sample`` (x0).
    spacing: which timesteps an N-step schedule visits, as diffusers' ``timestep_spacing``:
        ``leading`` (t = i * (T // N) + steps_offset; AudioLDM and Stable Diffusion use it
        with steps_offset 1), ``linspace`` or ``trailing`` (reaches t = T-1).
    set_alpha_to_one: where the chain ends. True: the clean signal (alpha 1, sigma 0).
        False: the first training level alphabar_0, as diffusers' DDIM with that flag
        (AudioLDM's scheduler config), so the result keeps a trace of noise at sigma ~ 0.04.
    snr_gamma: Min-SNR-gamma loss weighting (5 is the paper's choice); None: plain MSE.
    zero_terminal_snr: rescale the betas so the last timestep is pure noise, as diffusers'
        ``rescale_betas_zero_snr`` (Lin et al. 2024): training then sees what sampling starts
        from, where the usual schedules leave a trace of the signal at t = T-1 (alpha 0.012
        for AudioLDM's) that sampling's pure noise lacks. Use it with ``v`` prediction (epsilon
        cannot recover a signal from pure noise) and ``trailing`` spacing (which starts at
        T-1). The last beta repeats the one before it instead of being 1, so the last
        alphabar is about 4e-9 for AudioLDM's betas, not 0 (diffusers' DPM-Solver uses 2**-24
        for the same reason): every sampler's log-SNR and sigma/alpha stay finite and ordered.
    """

    def __init__(self, num_train_timesteps: int = 1000, betas: BetaSchedule = "linear",
                 beta_start: float = 0.0001, beta_end: float = 0.02, prediction: Prediction = "epsilon",
                 spacing: Spacing = "leading", steps_offset: int = 0, set_alpha_to_one: bool = True,
                 snr_gamma: float | None = None, zero_terminal_snr: bool = False):
        if prediction not in ("epsilon", "v", "sample"):
            raise ValueError(f"prediction must be epsilon, v or sample, got {prediction!r}")
        if spacing not in ("leading", "linspace", "trailing"):
            raise ValueError(f"spacing must be leading, linspace or trailing, got {spacing!r}")
        if num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be at least 2")
        self.num_train_timesteps = num_train_timesteps
        self.prediction = prediction
        self.snr_gamma = _gamma(snr_gamma)
        self.spacing = spacing
        self.steps_offset = steps_offset
        self.set_alpha_to_one = set_alpha_to_one
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self.betas = make_betas(betas, num_train_timesteps, beta_start, beta_end)
        if self.zero_terminal_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
            self.betas[-1] = self.betas[-2]  # not 1: the last alphabar is ~4e-9, not 0
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # the same float32 operations diffusers' step() applies to alphas_cumprod
        self.alpha = self.alphas_cumprod ** 0.5
        self.sigma = (1 - self.alphas_cumprod) ** 0.5
        # per-device copies of the tables (caches, not state: they never change a result)
        self._log_snr: dict = {}
        self._tables: dict = {}

    def timesteps(self, steps: int) -> torch.Tensor:
        """The training timesteps an N-step schedule visits, most noisy first (int64)."""
        import numpy as np

        T = self.num_train_timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be between 1 and num_train_timesteps={T}, got {steps}")
        if self.spacing == "linspace":
            ts = np.linspace(0, T - 1, steps).round()[::-1].copy().astype(np.int64)
        elif self.spacing == "leading":
            ratio = T // steps
            ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + self.steps_offset
        else:
            ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
        ts = torch.from_numpy(ts)
        if ts.max() >= T or ts.min() < 0:
            raise ValueError(f"steps_offset={self.steps_offset} pushes timesteps past {T - 1}")
        return ts

    def schedule(self, steps: int) -> torch.Tensor:
        """[steps+1, 2] (alpha, sigma): the visited timesteps, then the end level."""
        ts = self.timesteps(steps)
        rows = torch.stack([self.alpha[ts], self.sigma[ts]], dim=1)
        end = (torch.tensor([[1.0, 0.0]]) if self.set_alpha_to_one
               else torch.stack([self.alpha[:1], self.sigma[:1]], dim=1))
        return torch.cat([rows, end]).float()

    def net_time(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep whose level is nearest (in log-SNR) to (alpha, sigma), as float.

        Exact for the levels this process's schedules hold; any other level snaps to the
        nearest training timestep (the network never saw the ones between).
        """
        table = self._log_snr.get(alpha.device)
        if table is None:  # log-SNR by timestep, ascending (t = T-1 first)
            table = (2 * (self.alpha.log() - self.sigma.log())).flip(0).to(alpha.device)
            self._log_snr[alpha.device] = table
        query = (2 * (alpha.float().log() - sigma.float().log())).reshape(-1)
        last = self.num_train_timesteps - 1
        hi = torch.searchsorted(table, query).clamp(1, last)
        nearer_lo = (query - table[hi - 1]) < (table[hi] - query)
        index = torch.where(nearer_lo, hi - 1, hi)
        return (last - index).float().reshape(alpha.shape)

    def _draw_levels(self, n, generator, device):
        if generator is None:
            t = torch.randint(0, self.num_train_timesteps, (n,), device=device)
        else:
            t = _to_device(torch.randint(0, self.num_train_timesteps, (n,), generator=generator,
                                         device=generator.device), device)
        alpha, sigma = self._on(device)
        return t.float(), alpha[t], sigma[t]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) by timestep on ``device``, copied there once."""
        tables = self._tables.get(device)
        if tables is None:
            tables = self._tables[device] = (self.alpha.to(device), self.sigma.to(device))
        return tables

    def __repr__(self) -> str:
        return (f"VPDiscrete(T={self.num_train_timesteps}, prediction={self.prediction}, "
                f"spacing={self.spacing}, steps_offset={self.steps_offset}, "
                f"set_alpha_to_one={self.set_alpha_to_one}"
                + (", zero_terminal_snr=True)" if self.zero_terminal_snr else ")"))


# -- continuous v-diffusion (audio-diffusion-pytorch) --------------------------------------------


class VDiffusion(_Process):
    """Continuous v-diffusion on the quarter circle, as audio-diffusion-pytorch's VDiffusion
    trains and its VSampler samples.

    A level is a time s in [0, 1] with alpha = cos(s * pi/2), sigma = sin(s * pi/2); the
    network receives s (audio-diffusion-pytorch calls it "sigma"). Training draws s ~
    U[sigma_min, sigma_max]; an N-step schedule visits s = linspace(sigma_max, sigma_min, N+1)
    (its LinearSchedule).

    prediction: ``v`` (the reference), or ``epsilon`` / ``sample`` for other networks.
    snr_gamma: Min-SNR-gamma loss weighting; None (the reference): plain MSE.
    """

    def __init__(self, prediction: Prediction = "v", sigma_min: float = 0.0, sigma_max: float = 1.0,
                 snr_gamma: float | None = None):
        if prediction not in ("epsilon", "v", "sample"):
            raise ValueError(f"prediction must be epsilon, v or sample, got {prediction!r}")
        if not 0.0 <= sigma_min < sigma_max <= 1.0:
            raise ValueError(f"need 0 <= sigma_min < sigma_max <= 1, got {sigma_min}, {sigma_max}")
        self.prediction = prediction
        self.snr_gamma = _gamma(snr_gamma)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    @staticmethod
    def alpha_sigma(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = s * math.pi / 2  # the same float32 operations as audio-diffusion-pytorch
        return torch.cos(angle), torch.sin(angle)

    def schedule(self, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        s = torch.linspace(self.sigma_max, self.sigma_min, steps + 1)
        alpha, sigma = self.alpha_sigma(s)
        return torch.stack([alpha, sigma], dim=1)

    def net_time(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The time s of a level: the angle of (alpha, sigma) over pi/2."""
        return torch.atan2(sigma, alpha) * (2 / math.pi)

    def _draw_levels(self, n, generator, device):
        s = (self.sigma_max - self.sigma_min) * _draw_uniform(n, generator, device) + self.sigma_min
        alpha, sigma = self.alpha_sigma(s)
        return s, alpha, sigma

    def __repr__(self) -> str:
        return f"VDiffusion(prediction={self.prediction}, sigma in [{self.sigma_min}, {self.sigma_max}])"


# -- rectified flow (linear interpolation, velocity target) -------------------------------------

FlowPrediction = Literal["velocity", "sample"]
TimeSampling = Literal["uniform", "logit_normal"]


class RectifiedFlow(_Process):
    """Rectified flow / flow matching (Liu et al. 2022; Esser et al. 2024, SD3): the straight
    line from the data to the noise, x_t = (1 - t) x0 + t eps, so alpha = 1 - t, sigma = t.
    Not variance preserving: alpha + sigma = 1, and alpha^2 + sigma^2 dips to 1/2 at t = 1/2.

    The network receives ``time_scale * t`` with t = sigma / (alpha + sigma), which is the
    flow time of the process's own levels and, for any other level, the flow time with the
    same signal-to-noise ratio (the input is then scaled onto the line, x / (alpha + sigma)).

    prediction: ``velocity`` (the reference: v = eps - x0, the flow's d x_t / dt; not the
        variance-preserving v of ``vp_discrete``) or ``sample`` (x0). Epsilon is not offered:
        x0 cannot be recovered from it at t = 1, where every schedule starts.
    shift: SD3's time shift of the sampling schedule, t' = shift t / (1 + (shift - 1) t):
        above 1 spends more steps at high noise (SD3 uses 3.0 at 1024 px); 1 is no shift.
        Training times are not shifted.
    time_sampling: how training draws t: ``uniform`` on [0, 1], or ``logit_normal``
        (t = sigmoid(n), n ~ N(logit_mean, logit_std^2); SD3's choice with 0 and 1), which
        concentrates training on the middle of the path.
    time_scale: multiplies the network's time input: 1 gives t in [0, 1]; 1000 suits a
        network whose sinusoidal timestep embedding expects diffusers' 0..999 (SD3's
        transformer sees 1000 t).
    snr_gamma: Min-SNR-gamma weighting, as the x0 error weighted by min(SNR, gamma):
        min(alpha^2, gamma sigma^2) / (alpha + sigma)^2 on the velocity error.
    """

    def __init__(self, prediction: FlowPrediction = "velocity", shift: Annotated[float, Range(above=0)] = 1.0,
                 time_sampling: TimeSampling = "uniform", logit_mean: float | None = None,
                 logit_std: float | None = None, time_scale: Annotated[float, Range(above=0)] = 1.0,
                 snr_gamma: float | None = None):
        if prediction not in ("velocity", "sample"):
            hint = (" (x0 cannot be recovered from a noise estimate at t = 1, where sampling starts)"
                    if prediction == "epsilon" else "")
            raise ValueError(f"rectified_flow prediction must be velocity or sample, got {prediction!r}{hint}")
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"rectified_flow shift must be a positive number (1 = no shift, SD3 uses 3), got {shift}")
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"rectified_flow time_sampling must be uniform or logit_normal, got {time_sampling!r}")
        if time_sampling == "uniform" and (logit_mean is not None or logit_std is not None):
            raise ValueError("rectified_flow logit_mean and logit_std apply to time_sampling: logit_normal, "
                             "not to uniform")
        logit_mean = 0.0 if logit_mean is None else logit_mean
        logit_std = 1.0 if logit_std is None else logit_std
        if not math.isfinite(logit_mean) or not (math.isfinite(logit_std) and logit_std > 0):
            raise ValueError(f"rectified_flow needs a finite logit_mean and a positive logit_std (SD3: 0 and 1), "
                             f"got {logit_mean}, {logit_std}")
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"rectified_flow time_scale must be a positive number, got {time_scale}")
        self.prediction = prediction
        self.shift = float(shift)
        self.time_sampling = time_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.time_scale = float(time_scale)
        self.snr_gamma = _gamma(snr_gamma)

    def schedule(self, steps: int) -> torch.Tensor:
        """t = linspace(1, 0, steps + 1), shifted: rows (1 - t, t) from pure noise to the data."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        if self.shift != 1.0:
            t = self.shift * t / (1 + (self.shift - 1) * t)
        return torch.stack([1 - t, t], dim=1).float()

    def net_time(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return sigma / (alpha + sigma) * self.time_scale

    def to_x0(self, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 = x - t v on the line; a level off it is first scaled onto it by 1 / (alpha + sigma)."""
        if self.prediction == "sample":
            return output
        a, s = _bcast(alpha, x), _bcast(sigma, x)
        return (x - s * output) / (a + s)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return noise - x0 if self.prediction == "velocity" else x0

    def denoiser(self, net: Callable, cond: "Conditioning") -> "DenoiseFn":
        def denoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            on_line = x / _bcast(alpha + sigma, x)  # the identity (up to rounding) on the process's own levels
            return self.to_x0(net(on_line, self.net_time(alpha, sigma), cond), x, alpha, sigma)
        return denoise

    def loss_weights(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """min(SNR, gamma) on the x0 error, which is sigma / (alpha + sigma) times the velocity
        error: min(alpha^2, gamma sigma^2) / (alpha + sigma)^2; min(SNR, gamma) for ``sample``."""
        a, s = alpha.float(), sigma.float()
        if self.prediction == "velocity":
            return torch.minimum(a**2, self.snr_gamma * s**2) / (a + s) ** 2
        return super().loss_weights(alpha, sigma)

    def _draw_levels(self, n, generator, device):
        if self.time_sampling == "uniform":
            t = _draw_uniform(n, generator, device)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * _draw_standard_normal(n, generator, device))
        return t * self.time_scale, 1 - t, t

    def __repr__(self) -> str:
        return (f"RectifiedFlow(prediction={self.prediction}, shift={self.shift}, "
                f"time_sampling={self.time_sampling})")
