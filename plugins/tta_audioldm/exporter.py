"""``tta-run export diffusers RUN_DIR --out DIR``: a tta run as a diffusers ``AudioLDMPipeline``
folder, which ``AudioLDMPipeline.from_pretrained(DIR)`` loads and which samples as ``tta-run
RECIPE sample`` does for the same seed, steps, guidance and length. The inverse of
``tta-run import audioldm-diffusers`` (:mod:`tta_audioldm.importer`), part for part:

- ``clap_text`` -> ``text_encoder/`` (ClapTextModelWithProjection) + ``tokenizer/`` (its
  ``model_max_length`` the conditioner's ``max_length``, which the pipeline pads to);
- ``unet2d`` -> ``unet/`` (its UNet2DConditionModel, conditioned on the pooled CLAP vector only);
- ``kl_vae`` -> ``vae/`` (its AutoencoderKL, ``scaling_factor`` the trained scale);
- ``hifigan`` -> ``vocoder/`` (SpeechT5HifiGan);
- ``vp_discrete`` with the ``ddim`` or ``ddpm`` sampler -> ``scheduler/`` (DDIMScheduler or
  DDPMScheduler with the same betas, prediction, spacing, offset and final alpha, and no
  clipping: tta's samplers do none).

What the pipeline cannot hold is refused before anything is loaded, naming the part: another
text encoder (t5, clip, laion's clap), vocoder (griffin_lim) or network; a U-Net that takes
tokens by cross-attention (the pipeline gives it only the pooled vector) or folds latent
patches (``patch_size``); a VAE on a normalised log-mel (``mel_mean`` / ``mel_std``); another
process or sampler; more than one audio channel. What the folder does not keep (the recipe's
steps, guidance, length) is printed as the arguments to call the pipeline with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tta_core.plugin import UsageError, component_kind, resolve_roles

from .importer import _BETAS, _PREDICTIONS, _with_defaults

#: vp_discrete's names -> a diffusers scheduler's, the importer's tables turned round
BETA_SCHEDULES = {ours: theirs for theirs, ours in _BETAS.items()}
PREDICTION_TYPES = {ours: theirs for theirs, ours in _PREDICTIONS.items()}
SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}

#: role -> (the pipeline's part, what fills it, the one tta component type that is that)
PARTS = {
    "conditioner": ("text_encoder", "CLAP's text tower (ClapTextModelWithProjection)", "clap_text"),
    "denoiser": ("unet", "a UNet2DConditionModel", "unet2d"),
    "autoencoder": ("vae", "an AutoencoderKL on a one-channel log-mel", "kl_vae"),
    "vocoder": ("vocoder", "a SpeechT5HifiGan", "hifigan"),
    "process": ("scheduler", "a DDIM or DDPM scheduler over discrete VP timesteps", "vp_discrete"),
}


def _options(recipe: Any, name: str, registry: Any) -> dict:
    """Component ``name``'s arguments: its recipe node over its factory's defaults."""
    node = json.loads(json.dumps(dict(recipe.components[name])))
    return _with_defaults(registry.get(component_kind(recipe, name, registry), node.pop("type")).load(), node)


def _unet_problems(o: dict) -> list[str]:
    problems = []
    if o["cross_attention_dim"] is not None:
        problems.append(f"cross_attention_dim {o['cross_attention_dim']}: it reads text tokens by cross-attention, "
                        "and AudioLDMPipeline gives its U-Net only the pooled CLAP vector (class_labels)")
    if o["pooled_dim"] is None:
        problems.append("no pooled_dim: AudioLDMPipeline conditions its U-Net on the pooled CLAP vector only")
    patch = o["patch_size"]
    if (list(patch) if isinstance(patch, list) else [patch, patch]) != [1, 1]:
        problems.append(f"patch_size {patch}: it folds latent patches into channels around its UNet2DConditionModel; "
                        "the pipeline's U-Net takes the latent as it is")
    return problems


def _vae_problems(o: dict) -> list[str]:
    if float(o["mel_mean"]) == 0.0 and float(o["mel_std"]) == 1.0:
        return []
    return [f"mel_mean {o['mel_mean']} / mel_std {o['mel_std']}: the network works on a normalised log-mel, and "
            "AudioLDMPipeline hands the VAE's output to the vocoder as it is"]


def _text_problems(o: dict) -> list[str]:
    if not o["random_weights"]:
        return []
    return ["random_weights: its tokenizer is hashed words, which no diffusers pipeline can load"]


_CHECKS = {"conditioner": _text_problems, "denoiser": _unet_problems, "autoencoder": _vae_problems}


def _sampler_problems(recipe: Any, process: dict | None) -> list[str]:
    node = (recipe.get("sample") or {}).get("sampler") or {}
    kind = node.get("type")
    if kind is None:
        return ["sample.sampler: the recipe names no sampler; AudioLDMPipeline's scheduler is DDIM or DDPM "
                "(--set sample.sampler.type=ddim)"]
    if kind not in SCHEDULERS:
        return [f"sample.sampler ({kind}): AudioLDMPipeline steps with a diffusers scheduler; tta's ddim and ddpm "
                "are the ones DDIMScheduler and DDPMScheduler step as"]
    if kind == "ddpm" and process is not None and not process["set_alpha_to_one"]:
        return ["sample.sampler (ddpm) with process set_alpha_to_one false: DDPMScheduler always ends at the clean "
                "signal; sample with ddim, or set set_alpha_to_one true"]
    return []


class DiffusersExporter:
    """a diffusers AudioLDMPipeline folder (unet/, vae/, text_encoder/, tokenizer/, vocoder/, scheduler/)"""

    def check(self, recipe: Any, *, registry: Any) -> list[str]:
        roles = resolve_roles(recipe, registry)
        problems, process = [], None
        for role, (part, what, wanted) in PARTS.items():
            name = roles.get(role)
            if name is None:
                problems.append(f"{role}: the recipe has none; AudioLDMPipeline's {part} is {what} ({wanted})")
                continue
            kind = recipe.components[name].get("type")
            if kind != wanted:
                problems.append(f"{name} ({kind}): AudioLDMPipeline's {part} is {what}; only a {wanted} component "
                                f"exports to it")
                continue
            options = _options(recipe, name, registry)
            process = options if role == "process" else process
            problems += [f"{name} ({kind}): {p}" for p in _CHECKS.get(role, lambda o: [])(options)]
        problems += _sampler_problems(recipe, process)
        channels = recipe.audio.channels
        if channels != 1:
            problems.append(f"audio.channels {channels}: AudioLDMPipeline makes mono audio")
        return problems

    def __call__(self, pipeline: Any, out: Path) -> list[str]:
        from diffusers import AudioLDMPipeline

        notes: list[str] = []
        parts = dict(text_encoder=_as_transformers(pipeline.conditioner.model), tokenizer=_tokenizer(pipeline),
                     unet=_unet(pipeline, notes), vae=_vae(pipeline.autoencoder),
                     vocoder=_as_transformers(pipeline.vocoder.net), scheduler=_scheduler(pipeline))
        AudioLDMPipeline(**parts).save_pretrained(out, safe_serialization=True)
        return notes + _call_notes(pipeline)


def _tokenizer(pipeline: Any) -> Any:
    """The conditioner's tokenizer, padding to the length the conditioner pads to."""
    import copy

    from transformers import PreTrainedTokenizerBase

    cond = pipeline.conditioner
    tok = cond.tokenizer
    if hasattr(tok, "to_transformers"):  # read by the tokenizers library: transformers' own of its folder
        tok = tok.to_transformers()
    if not isinstance(tok, PreTrainedTokenizerBase):
        raise UsageError(f"{pipeline.roles['conditioner']}: its tokenizer ({type(tok).__name__}) is not one "
                         "transformers can save and diffusers load")
    if int(tok.model_max_length) != int(cond.max_length):  # the pipeline pads prompts to model_max_length
        tok = copy.deepcopy(tok)
        tok.model_max_length = int(cond.max_length)
    return tok


def _unet(pipeline: Any, notes: list[str]) -> Any:
    """The denoiser's UNet2DConditionModel. A network built here (not from a diffusers
    configuration) pads latents to a multiple of its downsampling; the pipeline's does not,
    so the two agree only at lengths that need no padding."""
    den, ae = pipeline.denoiser, pipeline.autoencoder
    mt, mf = den.multiple
    frames, width = ae.latent_shape(pipeline.length_for(pipeline.audio.duration))[-2:]
    name = pipeline.roles["denoiser"]
    if width % mf:
        raise UsageError(f"{name} (unet2d): the latent is {width} wide, which the network pads to a multiple of {mf} "
                         "as it was trained; the pipeline's U-Net runs unpadded, so no length would sample alike")
    if mt > 1:
        step = mt * ae.ratio * pipeline.vocoder.hop_length / pipeline.vocoder.sample_rate
        notes.append(f"{name}: the network pads latent frames to a multiple of {mt} and the pipeline's does not: "
                     f"they agree for audio_length_in_s a multiple of {step:g} s"
                     + ("" if frames % mt == 0 else f" (the recipe's {pipeline.audio.duration:g} s is not)"))
    return _as_diffusers(den.unet)


def _as_diffusers(net: Any) -> Any:
    """diffusers' class of a network: tta's own (tta_audioldm.nets) converted, weights and all."""
    return net.to_diffusers() if hasattr(net, "to_diffusers") else net


def _as_transformers(net: Any) -> Any:
    """transformers' class of a network: tta's own (tta_audioldm.nets) converted, weights and all."""
    return net.to_transformers() if hasattr(net, "to_transformers") else net


def _vae(ae: Any) -> Any:
    """The autoencoder's AutoencoderKL, its ``scaling_factor`` the trained scale (kept as the
    configuration writes it when that is the same number in float32)."""
    import torch

    vae, scale = _as_diffusers(ae.vae), ae.scale_factor.detach().float().cpu()
    if not torch.equal(torch.tensor(float(vae.config.scaling_factor), dtype=torch.float32), scale):
        vae.register_to_config(scaling_factor=float(scale))
    return vae


def _scheduler(pipeline: Any) -> Any:
    """The scheduler that steps as the recipe's sampler does on its vp_discrete process."""
    import diffusers

    recipe, registry = pipeline.recipe, pipeline.registry
    p = _options(recipe, pipeline.roles["process"], registry)
    sampler = pipeline.sampler_node()["type"]
    common = dict(num_train_timesteps=int(p["num_train_timesteps"]), beta_start=float(p["beta_start"]),
                  beta_end=float(p["beta_end"]), beta_schedule=BETA_SCHEDULES[p["betas"]],
                  prediction_type=PREDICTION_TYPES[p["prediction"]], timestep_spacing=str(p["spacing"]),
                  steps_offset=int(p["steps_offset"]), clip_sample=False, thresholding=False,
                  rescale_betas_zero_snr=bool(p["zero_terminal_snr"]))
    if sampler == "ddpm":
        return diffusers.DDPMScheduler(**common, variance_type="fixed_small")
    return diffusers.DDIMScheduler(**common, set_alpha_to_one=bool(p["set_alpha_to_one"]))


def _call_notes(pipeline: Any) -> list[str]:
    """The recipe's sampling settings as the pipeline's call arguments (the folder keeps none)."""
    st = pipeline.settings()
    args = [f"num_inference_steps={st.steps}", f"guidance_scale={st.guidance.scale:g}",
            f"audio_length_in_s={st.duration:g}"]
    eta = float(st.sampler.get("eta", 0.0) or 0.0)
    if eta:
        args.append(f"eta={eta:g}")
    if st.negative:
        args.append(f"negative_prompt={st.negative!r}")
    notes = [f"the recipe samples with {', '.join(args)}: pass these to the pipeline (its own defaults differ)"]
    if st.guidance.rescale or st.guidance.interval is not None:
        notes.append("the recipe's guidance_rescale / guidance_interval have no AudioLDMPipeline argument: "
                     "the pipeline samples without them")
    return notes
