"""``tta-run import audioldm-diffusers DIR --out RUN_DIR``: a diffusers ``AudioLDMPipeline``
folder (``unet/``, ``vae/``, ``text_encoder/`` + ``tokenizer/``, ``vocoder/``, ``scheduler/``,
as ``save_pretrained`` writes it or the hub's ``cvssp/audioldm-*`` repositories hold it) as
a tta run directory.

Each part keeps its network exactly (its ``config.json`` goes into the recipe whole, read
with the defaults of the class the pipeline loads it with):

- ``unet/`` -> ``unet2d`` with ``diffusers_config``, conditioned by FiLM on the CLAP text
  vector (``pooled_dim`` = the class-embedding input, ``pooled_concat`` as configured);
- ``vae/`` -> ``kl_vae`` with ``diffusers_config`` (its ``scaling_factor`` is the scale);
- ``text_encoder/`` + ``tokenizer/`` -> ``clap_text`` (ClapTextModelWithProjection, the text
  embedding L2-normalised as the pipeline does; the tokenizer folder is copied into the run);
- ``vocoder/`` -> ``hifigan`` with its configuration (SpeechT5HifiGan's defaults filled in);
- ``scheduler/scheduler_config.json`` -> the ``vp_discrete`` process (betas, prediction,
  training steps, spacing, offset, final alpha, ``rescale_betas_zero_snr`` as
  ``zero_terminal_snr``) and the sampler of its class (DDIM for ``DDIMScheduler``, DDPM for
  ``DDPMScheduler``; DDIM, with a note, for others).

What tta cannot represent is refused before anything is written, naming the field: parts
that are not AudioLDM's classes, a U-Net that does not fit the VAE's latents or the text
encoder's vector, a scheduler with ``trained_betas``, another beta schedule or prediction,
``clip_sample`` or ``thresholding`` (tta's samplers do neither); the networks' own
components refuse configurations they cannot build (kl_vae: other than one mel channel,
shifted or normalised latents; unet2d: inputs beyond tokens and a pooled vector).

The audio section follows the vocoder (rate, hop, mel bands) with AudioLDM's STFT
(1024-point, 0-8 kHz); its duration is the pipeline's default length (the U-Net's
``sample_size`` in latent frames), or the shortest that holds one STFT window when that is
shorter, and ``min_duration`` is at most the duration. The VAE and the U-Net each get a
training stage (``vae``, ``ldm``: the U-Net fine-tunes on captions through the frozen text
encoder, given ``data.train``), the text encoder and vocoder land in ``weights/``. Weights
are read from ``*.safetensors`` (or ``*.bin``, without running anything in it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from tta_core.plugin import UsageError

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "vocoder", "scheduler")
_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "sample"}


def _config(folder: Path, part: str, name: str = "config.json") -> dict:
    path = folder / part / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{folder} is not an AudioLDM pipeline folder: cannot read {part}/{name} ({exc})") from None


def _weights(folder: Path, part: str) -> tuple[dict, str]:
    from tta_core.plugin import read_tensors, state_dict_of

    files = sorted((folder / part).glob("*.safetensors")) or sorted((folder / part).glob("*.bin"))
    if not files:
        raise UsageError(f"{folder / part} holds no weights (*.safetensors or *.bin)")
    state: dict = {}
    for f in files:  # one file, or the shards of a sharded save
        state.update(state_dict_of(read_tensors(f), f))
    return state, str(folder / part)


#: The written recipe's ``audio.min_duration`` unless that is longer than its duration.
MIN_DURATION = 0.25
#: AudioLDM's STFT (1024-point, 0-8 kHz), which its vocoder and VAE were trained on.
N_FFT = 1024


def _recipe(*, name: str, origin: str, rate: int, hop: int, n_mels: int, duration: float, vae_cfg: dict,
            text_cfg: dict, unet_cfg: dict, voc_cfg: dict, process: dict, out: Path, overrides: Sequence[str],
            where: str, sampler: str = "ddim") -> Any:
    """The recipe of an imported AudioLDM: its networks exactly, AudioLDM's STFT, a VAE and an
    LDM stage, DDIM 200 steps at guidance 2.5 (the original's defaults); ``--set`` applied.
    ``audio.min_duration`` (unless ``--set``) is at most the duration, so a short model's
    recipe is valid too."""
    from tta_core.plugin import Recipe, apply_override, load_yaml

    data = {
        "name": name,
        "description": f"imported from {origin}",
        "audio": {"sample_rate": rate, "duration": duration,
                  "mel": {"n_fft": N_FFT, "hop": hop, "win": N_FFT, "n_mels": n_mels,
                          "fmin": 0, "fmax": min(8000, rate // 2)}},
        "components": {
            "vae": {"type": "kl_vae", "diffusers_config": vae_cfg},
            "text": {"type": "clap_text", "config": text_cfg, "tokenizer": str(out / "tokenizer")},
            "unet": {"type": "unet2d", "diffusers_config": unet_cfg, "cross_attention_dim": None,
                     "pooled_dim": int(unet_cfg["projection_class_embeddings_input_dim"]),
                     "pooled_concat": bool(unet_cfg.get("class_embeddings_concat", False))},
            "process": process,
            "vocoder": {"type": "hifigan", "config": voc_cfg},
        },
        "train": [
            {"name": "vae", "objective": {"type": "vae_gan"}, "trains": ["vae"], "max_steps": 100000},
            {"name": "ldm", "objective": {"type": "latent_diffusion", "cfg_dropout": 0.1}, "trains": ["unet"],
             "frozen": ["vae", "text"], "max_steps": 100000, "optimizer": {"lr": 3.0e-5}},
        ],
        # the original's defaults: DDIM 200 steps, guidance 2.5
        "sample": {"sampler": {"type": sampler}, "steps": 200, "guidance": 2.5},
    }
    node = load_yaml(json.dumps(data), where)  # location-keeping nodes, as a recipe file gives
    problems = []
    for text in overrides:
        try:
            apply_override(node, text)
        except Exception as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("--set: " + "; ".join(problems))
    audio = node.get("audio")
    if isinstance(audio, dict) and "min_duration" not in audio and isinstance(audio.get("duration"), (int, float)):
        audio["min_duration"] = min(MIN_DURATION, float(audio["duration"]))
    return Recipe(path=out / "recipe.yaml", data=node, overrides=tuple(overrides))


def _with_defaults(cls: Any, cfg: dict) -> dict:
    """``cfg`` with the defaults of ``cls``'s constructor (or of a factory function) where it
    leaves a key out: the values the pipeline's own classes load it with."""
    import inspect

    params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters.values()
    return {**{p.name: p.default for p in params if p.default is not inspect.Parameter.empty}, **cfg}


def _expect_class(cfg: dict, part: str, key: str, names: Sequence[str]) -> None:
    got = cfg.get(key)
    got = got[0] if isinstance(got, list) and len(got) == 1 else got
    if got is not None and got not in names:
        raise UsageError(f"{part}/config.json: {key} is {got!r}; an AudioLDM pipeline's {part} is "
                         f"{' or '.join(names)}, which is what tta imports")


def _networks(vae_raw: dict, unet_raw: dict, text_cfg: dict) -> tuple[dict, dict]:
    """The VAE's and U-Net's configurations filled with diffusers' defaults, after the checks
    that they fit each other and the text encoder as the pipeline joins them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    _expect_class(vae_raw, "vae", "_class_name", ["AutoencoderKL"])
    _expect_class(unet_raw, "unet", "_class_name", ["UNet2DConditionModel"])
    vae, unet = _with_defaults(AutoencoderKL, vae_raw), _with_defaults(UNet2DConditionModel, unet_raw)
    if unet["class_embed_type"] not in ("simple_projection", "projection"):
        raise UsageError("unet/: AudioLDM's U-Net takes the CLAP vector as a simple_projection class embedding; "
                         f"this one has class_embed_type {unet['class_embed_type']!r}")
    width = int(text_cfg.get("projection_dim", 512))
    if unet["projection_class_embeddings_input_dim"] != width:
        raise UsageError(f"unet/config.json: projection_class_embeddings_input_dim is "
                         f"{unet['projection_class_embeddings_input_dim']}, but the text encoder's projection_dim is "
                         f"{width}: the U-Net could not take its CLAP vector")
    if not (int(unet["in_channels"]) == int(unet["out_channels"]) == int(vae["latent_channels"])):
        raise UsageError(f"unet/config.json: in_channels {unet['in_channels']} and out_channels {unet['out_channels']} "
                         f"must both be the VAE's latent_channels ({vae['latent_channels']})")
    size = unet["sample_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"unet/config.json: sample_size is {size!r}; the AudioLDM pipeline's default length needs "
                         "a whole number of latent frames")
    return vae, unet


def _duration(frames: int, per_frame: int, rate: int, notes: list[str]) -> float:
    """The pipeline's default length (``frames`` latent frames of ``per_frame`` samples), or
    the shortest one that holds an STFT window when it is shorter."""
    if frames * per_frame <= N_FFT:
        wanted = N_FFT // per_frame + 1
        notes.append(f"the pipeline's default length ({frames * per_frame / rate:g} s) holds less than one "
                     f"{N_FFT}-sample STFT window: audio.duration is {wanted * per_frame / rate:g} s "
                     f"({wanted} latent frames), the shortest that does; change it with --set audio.duration=...")
        frames = wanted
    return frames * per_frame / rate


_SAMPLERS = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm"}
_SPACINGS = ("leading", "linspace", "trailing")


def _process(raw: dict, notes: list[str]) -> tuple[dict, str]:
    """The ``vp_discrete`` process of a scheduler configuration, and the sampler that steps
    as it does. What tta's processes and samplers cannot do is refused, naming the field."""
    import diffusers

    name = str(raw.get("_class_name", "DDIMScheduler"))
    cls = getattr(diffusers, name, None) if name.isidentifier() and name.endswith("Scheduler") else None
    if cls is None:
        raise UsageError(f"scheduler/scheduler_config.json: _class_name {name!r} is not a diffusers scheduler")
    sched = _with_defaults(cls, raw)
    where = "scheduler/scheduler_config.json"
    if sched.get("trained_betas") is not None:
        raise UsageError(f"{where}: trained_betas (an explicit beta table) has no vp_discrete equivalent; "
                         f"vp_discrete builds {', '.join(_BETAS)} schedules")
    beta = sched.get("beta_schedule", "linear")
    if beta not in _BETAS:
        raise UsageError(f"{where}: beta_schedule {beta!r} has no vp_discrete equivalent (known: {', '.join(_BETAS)})")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise UsageError(f"{where}: prediction_type {prediction!r} is not one of {', '.join(_PREDICTIONS)}")
    spacing = sched.get("timestep_spacing", "leading")
    if spacing not in _SPACINGS:
        raise UsageError(f"{where}: timestep_spacing {spacing!r} is not one of {', '.join(_SPACINGS)}")
    for key, what in (("clip_sample", "clips each step's clean-signal estimate to clip_sample_range"),
                      ("thresholding", "thresholds each step's clean-signal estimate dynamically")):
        if sched.get(key):
            raise UsageError(f"{where}: {key} is true (the scheduler {what}); tta's processes and samplers do not, "
                             f"so the imported model would not sample as the pipeline does. Refused; a copy of the "
                             f"folder with \"{key}\": false imports (and samples without it)")
    if name == "DDPMScheduler" and sched.get("variance_type") not in ("fixed_small", None):
        raise UsageError(f"{where}: variance_type {sched.get('variance_type')!r}; tta's ddpm sampler has "
                         "diffusers' fixed_small variance")
    sampler = _SAMPLERS.get(name, "ddim")
    if name not in _SAMPLERS:
        notes.append(f"scheduler: {name} has no tta sampler; the recipe samples with DDIM on the same noise "
                     "schedule (--sampler, or --set sample.sampler.type=..., chooses another)")
    process = {
        "type": "vp_discrete", "num_train_timesteps": int(sched.get("num_train_timesteps", 1000)),
        "betas": _BETAS[beta], "beta_start": float(sched.get("beta_start", 0.0001)),
        "beta_end": float(sched.get("beta_end", 0.02)), "prediction": _PREDICTIONS[prediction],
        "spacing": spacing, "steps_offset": int(sched.get("steps_offset", 0) or 0),
        # DDPMScheduler (and those without the option) step to alpha 1 at the end
        "set_alpha_to_one": bool(sched.get("set_alpha_to_one", True)),
    }
    if sched.get("rescale_betas_zero_snr"):
        process["zero_terminal_snr"] = True
    return process, sampler


def _vocoder(raw: dict) -> dict:
    """The vocoder's configuration, SpeechT5HifiGanConfig's defaults filled in (hifigan would
    fill AudioLDM's, which are not the pipeline's)."""
    from transformers import SpeechT5HifiGanConfig

    _expect_class(raw, "vocoder", "architectures", ["SpeechT5HifiGan"])
    keep = {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version", "_name_or_path")}
    return _with_defaults(SpeechT5HifiGanConfig, keep)


class DiffusersImporter:
    """a diffusers AudioLDMPipeline folder (unet/, vae/, text_encoder/, tokenizer/, vocoder/, scheduler/)"""

    def __call__(self, sources: Sequence[Path], *, out: Path, recipe: str | None, overrides: Sequence[str],
                 registry: Any) -> Any:
        import torch

        from tta_core.plugin import Imported

        if len(sources) != 1 or not Path(sources[0]).is_dir():
            raise UsageError("audioldm-diffusers takes one folder: the pipeline's (save_pretrained or a hub snapshot)")
        if recipe is not None:
            raise UsageError("audioldm-diffusers writes its recipe from the pipeline's configs; adjust it with --set")
        folder = Path(sources[0])
        missing = [p for p in PARTS if not (folder / p).is_dir()]
        if missing:
            raise UsageError(f"{folder} is not an AudioLDM pipeline folder: no {', '.join(p + '/' for p in missing)}")
        unet_raw, vae_raw = _config(folder, "unet"), _config(folder, "vae")
        text_cfg, voc_cfg = _config(folder, "text_encoder"), _vocoder(_config(folder, "vocoder"))
        _expect_class(text_cfg, "text_encoder", "architectures", ["ClapTextModelWithProjection"])
        notes: list[str] = []
        vae_cfg, unet_cfg = _networks(vae_raw, unet_raw, text_cfg)
        process, sampler = _process(_config(folder, "scheduler", "scheduler_config.json"), notes)

        hop, rate = math.prod(voc_cfg["upsample_rates"]), int(voc_cfg["sampling_rate"])
        vae_scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)  # as the pipeline's vae_scale_factor
        duration = _duration(int(unet_cfg["sample_size"]), vae_scale * hop, rate, notes)
        rec = _recipe(name=folder.name or "audioldm", origin=f"the diffusers AudioLDM pipeline in {folder}",
                      rate=rate, hop=hop, n_mels=int(voc_cfg["model_in_dim"]), duration=duration,
                      vae_cfg=vae_raw, text_cfg=text_cfg, unet_cfg=unet_raw,
                      voc_cfg=voc_cfg, process=process, out=out, overrides=overrides, where=str(folder),
                      sampler=sampler)

        weights, sources_ = {}, {}
        vae, sources_["vae"] = _weights(folder, "vae")
        weights["vae"] = {f"vae.{k}": v for k, v in vae.items()}
        weights["vae"]["scale_factor"] = torch.tensor(float(vae_cfg["scaling_factor"]))
        unet, sources_["unet"] = _weights(folder, "unet")
        weights["unet"] = {f"unet.{k}": v for k, v in unet.items()}
        text, sources_["text"] = _weights(folder, "text_encoder")
        weights["text"] = {f"model.{k}": v for k, v in text.items()}
        voc, sources_["vocoder"] = _weights(folder, "vocoder")
        weights["vocoder"] = {f"net.{k}": v for k, v in voc.items()}
        return Imported(recipe=rec, weights=weights, sources=sources_, notes=notes,
                        files={"tokenizer": folder / "tokenizer"})


#: AudioLDM's settings the weights do not hold (audioldm/utils.py's default configuration).
AUDIOLDM = {"linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "duration": 10.24}


def _tokenizer_folder(given: Path | None) -> Path:
    """The RoBERTa tokenizer the CLAP text tower reads: the folder given, else roberta-base
    from the local Hugging Face cache."""
    if given is not None:
        if not given.is_dir():
            raise UsageError(f"{given}: not a folder (the CLAP text tokenizer's: vocab.json, merges.txt)")
        return given
    try:
        from huggingface_hub import try_to_load_from_cache

        for repo in ("roberta-base", "FacebookAI/roberta-base", "laion/clap-htsat-unfused"):
            found = try_to_load_from_cache(repo, "vocab.json")
            if isinstance(found, str) and (Path(found).parent / "merges.txt").is_file():
                return Path(found).parent
    except ImportError:
        pass
    raise UsageError("audioldm-ckpt needs the CLAP text tokenizer (RoBERTa's vocab.json + merges.txt): pass its "
                     "folder after the checkpoint (a roberta-base or laion/clap-htsat-unfused snapshot, or a "
                     "diffusers AudioLDM folder's tokenizer/); none is in the local Hugging Face cache")


class CkptImporter:
    """an original AudioLDM checkpoint (.ckpt, s/m/l; plus the RoBERTa tokenizer's folder)"""

    def __call__(self, sources: Sequence[Path], *, out: Path, recipe: str | None, overrides: Sequence[str],
                 registry: Any) -> Any:
        import torch

        from tta_core.plugin import Imported, read_tensors, state_dict_of, under

        from . import ldm_layout as L
        from .vocoders import AUDIOLDM_HIFIGAN

        if not 1 <= len(sources) <= 2:
            raise UsageError("audioldm-ckpt takes the checkpoint, and optionally the RoBERTa tokenizer's folder")
        if recipe is not None:
            raise UsageError("audioldm-ckpt writes its recipe from the checkpoint; adjust it with --set")
        path = Path(sources[0])
        tokenizer = _tokenizer_folder(Path(sources[1]) if len(sources) == 2 else None)
        state = state_dict_of(read_tensors(path, weights_only=True), path)
        parts = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "vocoder": "first_stage_model.vocoder.",
                 "text": "cond_stage_model.model."}
        found = {name: under(state, prefix) for name, prefix in parts.items()}
        found["vae"] = {k: v for k, v in found["vae"].items() if not k.startswith(("vocoder.", "loss."))}
        missing = [f"{name} ({prefix}*)" for name, prefix in parts.items() if not found[name]]
        if missing:
            raise UsageError(f"{path} is not a whole AudioLDM checkpoint: nothing under {', '.join(missing)}")
        notes = []

        unet = found["unet"]
        head_width = L.audioldm_head_width(unet)
        voc_cfg = L.hifigan_config(found["vocoder"], base=AUDIOLDM_HIFIGAN)
        rate, hop, n_mels = int(voc_cfg["sampling_rate"]), math.prod(voc_cfg["upsample_rates"]), int(voc_cfg["model_in_dim"])
        if "scale_factor" not in state:
            raise UsageError(f"{path}: no scale_factor (AudioLDM's scale-by-std); is it a latent diffusion checkpoint?")
        vae_cfg = L.vae_config(found["vae"], scaling_factor=float(state["scale_factor"]))
        ratio = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        frames = round(AUDIOLDM["duration"] * rate / hop)
        unet_cfg = L.unet_config(unet, head_width=head_width, sample_size=[frames // ratio, n_mels // ratio])
        if unet_cfg.get("class_embed_type") != "simple_projection":
            raise UsageError(f"{path}: the U-Net has no film_emb (AudioLDM's CLAP FiLM); not an AudioLDM 1 checkpoint")
        text_cfg = L.clap_text_config(found["text"])
        ema = {}
        flat = under(state, "model_ema.")
        if len(flat) > 100:  # LitEma: the U-Net's names with the dots taken out
            keys = {k.replace(".", ""): k for k in unet}
            ema_unet = {keys[k[len("diffusion_model"):]]: v for k, v in flat.items()
                        if k.startswith("diffusion_model") and k[len("diffusion_model"):] in keys}
            if len(ema_unet) == len(unet):
                ema["unet"] = {f"unet.{k}": v for k, v in L.unet_weights(ema_unet, unet_cfg["layers_per_block"]).items()}
                notes.append("the checkpoint holds EMA weights of the U-Net: sampling uses them, --no-ema the raw ones")
        process = {"type": "vp_discrete", "num_train_timesteps": AUDIOLDM["timesteps"], "betas": "scaled_linear",
                   "beta_start": AUDIOLDM["linear_start"], "beta_end": AUDIOLDM["linear_end"], "prediction": "epsilon",
                   "spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
        rec = _recipe(name=path.stem, origin=f"the AudioLDM checkpoint {path}", rate=rate, hop=hop, n_mels=n_mels,
                      duration=AUDIOLDM["duration"], vae_cfg=vae_cfg, text_cfg=text_cfg, unet_cfg=unet_cfg,
                      voc_cfg=voc_cfg, process=process, out=out, overrides=overrides, where=str(path))
        weights = {
            "unet": {f"unet.{k}": v for k, v in L.unet_weights(unet, unet_cfg["layers_per_block"]).items()},
            "vae": {**{f"vae.{k}": v for k, v in L.vae_weights(found["vae"]).items()},
                    "scale_factor": torch.tensor(float(state["scale_factor"]))},
            "text": {f"model.{k}": v for k, v in L.clap_text_weights(found["text"]).items()},
            "vocoder": {f"net.{k}": v for k, v in L.hifigan_weights(found["vocoder"], n_mels).items()},
        }
        sources_ = {name: f"{path} ({prefix})" for name, prefix in parts.items()}
        notes.append(f"U-Net attention heads of {head_width} channels (AudioLDM {'L' if head_width == 64 else 'S/M'}); "
                     "change with --set components.unet.diffusers_config.attention_head_dim=[...] (heads per level)")
        return Imported(recipe=rec, weights=weights, ema=ema, sources=sources_, notes=notes,
                        files={"tokenizer": tokenizer})
