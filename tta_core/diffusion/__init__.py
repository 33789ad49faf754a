"""Diffusion maths shared by every model: processes, samplers and guidance.

- :mod:`.processes`: ``VPDiscrete`` (diffusers' discrete DDPM schedules), ``VDiffusion``
  (audio-diffusion-pytorch's cos/sin v-diffusion) and ``RectifiedFlow`` (the linear flow,
  velocity target): schedules, ``denoise``, training loss.
- :mod:`.samplers`: ``sample_ddpm``, ``sample_ddim``, ``sample_v`` and their registry
  factories ``DDPM``, ``DDIM``, ``VSampler``; ``initial_noise``, the x_T a schedule starts
  from.
- :mod:`.guidance`: classifier-free guidance around a process's denoise.

The built-in plugin ``tta_diffusion`` registers them; this package names no model.
"""

from .guidance import Guidance, guided_denoiser, rescale_noise_cfg
from .processes import RectifiedFlow, TrainingPair, VDiffusion, VPDiscrete
from .samplers import DDIM, DDPM, VSampler, initial_noise, sample_ddim, start_scale, sample_ddpm, sample_v

__all__ = [
    "Guidance", "guided_denoiser", "rescale_noise_cfg",
    "RectifiedFlow", "TrainingPair", "VDiffusion", "VPDiscrete",
    "DDIM", "DDPM", "VSampler", "initial_noise", "sample_ddim", "sample_ddpm", "sample_v", "start_scale",
]
