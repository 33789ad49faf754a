"""Registers the AudioLDM family. Factories are "module:attribute" strings: listing plugins
imports neither torch nor diffusers."""

from tta_core.plugin import hookimpl

_P = "tta_audioldm"


@hookimpl
def tta_register(register):
    register("autoencoder", "kl_vae", f"{_P}.vae:KLVAE")
    register("denoiser", "unet2d", f"{_P}.unet:UNet2D")
    register("conditioner", "t5", f"{_P}.t5:T5Conditioner")
    register("conditioner", "clap", f"{_P}.clap:CLAPConditioner")
    register("conditioner", "clap_text", f"{_P}.clap_text:ClapTextConditioner")
    register("conditioner", "clip", f"{_P}.clip_text:CLIPTextConditioner")
    register("importer", "audioldm-diffusers", f"{_P}.importer:DiffusersImporter")
    register("importer", "audioldm-ckpt", f"{_P}.importer:CkptImporter")
    register("importer", "amphion-tta", f"{_P}.amphion_import:AmphionImporter")
    register("exporter", "diffusers", f"{_P}.exporter:DiffusersExporter")
    register("vocoder", "griffin_lim", f"{_P}.vocoders:GriffinLim")
    register("vocoder", "hifigan", f"{_P}.vocoders:HiFiGAN")
    register("vocoder", "learned_griffin_lim", f"{_P}.vocoders:LearnedGriffinLim")
    register("objective", "vae_gan", f"{_P}.vae_gan:VAEGAN")
    register("objective", "hifigan", f"{_P}.hifigan_train:HiFiGANObjective")
    register("objective", "linear_spectrogram", f"{_P}.magnitude_train:LinearSpectrogramObjective")
