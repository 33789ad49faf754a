"""Registers tta's diffusion processes and samplers.

Factories are named by ``"module:attribute"`` so that listing plugins imports no torch.
"""

from tta_core.plugin import hookimpl

_PROCESSES = "tta_core.diffusion.processes"
_SAMPLERS = "tta_core.diffusion.samplers"


@hookimpl
def tta_register(register):
    register("process", "vp_discrete", f"{_PROCESSES}:VPDiscrete")
    register("process", "v_diffusion", f"{_PROCESSES}:VDiffusion")
    register("process", "rectified_flow", f"{_PROCESSES}:RectifiedFlow")
    register("sampler", "ddpm", f"{_SAMPLERS}:DDPM")
    register("sampler", "ddim", f"{_SAMPLERS}:DDIM")
    register("sampler", "vsampler", f"{_SAMPLERS}:VSampler")
