"""Registers the objectives every family shares (their code lives in tta_core.training)."""

from tta_core.plugin import hookimpl


@hookimpl
def tta_register(register):
    register("objective", "latent_diffusion", "tta_core.training.latent_diffusion:LatentDiffusion")
