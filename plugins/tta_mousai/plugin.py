"""Registers the Mousai family. Factories are "module:attribute" strings: listing plugins
imports neither torch nor audio-diffusion-pytorch."""

from tta_core.plugin import hookimpl

_P = "tta_mousai"


@hookimpl
def tta_register(register):
    register("denoiser", "unet1d", f"{_P}.unet1d:UNet1D")
    register("autoencoder", "diffae", f"{_P}.diffae:DiffAE")
    register("objective", "diffae", f"{_P}.objective:DiffAETraining")
    register("importer", "diffae-birds", f"{_P}.importer:BirdsImporter")
