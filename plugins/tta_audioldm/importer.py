"""``tta-run import audioldm-diffusers DIR --out RUN_DIR``: a diffusers ``AudioLDMPipeline``
folder (``unet/``, ``vae/``, ``text_encoder/`` + ``tokenizer/``, ``vocoder/``, ``scheduler/``,
as ``save_pretrained`` writes it or the hub's ``cvssp/audioldm-*`` repositories hold it) as
a tta run directory.

Each part keeps its network exactly (its ``config.json`` goes into the recipe):

- ``unet/`` -> ``unet2d`` with ``diffusers_config``, conditioned by FiLM on the CLAP text
  vector (``pooled_dim`` = the class-embedding input, ``pooled_concat`` as configured);
- ``vae/`` -> ``kl_vae`` with ``diffusers_config`` (its ``scaling_factor`` is the scale);
- ``text_encoder/`` + ``tokenizer/`` -> ``clap_text`` (ClapTextModelWithProjection, the text
  embedding L2-normalised as the pipeline does; the tokenizer folder is copied into the run);
- ``vocoder/`` -> ``hifigan`` with its configuration;
- ``scheduler/scheduler_config.json`` -> the ``vp_discrete`` process (betas, prediction,
  spacing, offset, final alpha) and DDIM sampling.

The audio section follows the vocoder (rate, hop, mel bands) with AudioLDM's STFT
(1024-point, 0-8 kHz); its duration is the pipeline's default length (the U-Net's
``sample_size``). The VAE and the U-Net each get a training stage (``vae``, ``ldm``: the U-Net
fine-tunes on captions through the frozen text encoder, given ``data.train``), the text
encoder and vocoder land in ``weights/``. Weights are read from ``*.safetensors`` (or
``*.bin``, without running anything in it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from tta_core.errors import UsageError

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
    from tta_core.importing import read_tensors, state_dict_of

    files = sorted((folder / part).glob("*.safetensors")) or sorted((folder / part).glob("*.bin"))
    if not files:
        raise UsageError(f"{folder / part} holds no weights (*.safetensors or *.bin)")
    state: dict = {}
    for f in files:  # one file, or the shards of a sharded save
        state.update(state_dict_of(read_tensors(f), f))
    return state, str(folder / part)


def _recipe(*, name: str, origin: str, rate: int, hop: int, n_mels: int, duration: float, vae_cfg: dict,
            text_cfg: dict, unet_cfg: dict, voc_cfg: dict, process: dict, out: Path, overrides: Sequence[str],
            where: str) -> Any:
    """The recipe of an imported AudioLDM: its networks exactly, AudioLDM's STFT, a VAE and an
    LDM stage, DDIM 200 steps at guidance 2.5 (the original's defaults); ``--set`` applied."""
    from tta_core.recipe import Recipe, apply_override
    from tta_core.yamlio import load_yaml

    data = {
        "name": name,
        "description": f"imported from {origin}",
        "audio": {"sample_rate": rate, "duration": duration,
                  "mel": {"n_fft": 1024, "hop": hop, "win": 1024, "n_mels": n_mels,
                          "fmin": 0, "fmax": min(8000, rate // 2)}},
        "components": {
            "vae": {"type": "kl_vae", "diffusers_config": vae_cfg},
            "text": {"type": "clap_text", "config": text_cfg, "tokenizer": str(out / "tokenizer")},
            "unet": {"type": "unet2d", "diffusers_config": unet_cfg, "cross_attention_dim": None,
                     "pooled_dim": int(unet_cfg.get("projection_class_embeddings_input_dim") or 512),
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
        "sample": {"sampler": {"type": "ddim"}, "steps": 200, "guidance": 2.5},
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
    return Recipe(path=out / "recipe.yaml", data=node, overrides=tuple(overrides))


class DiffusersImporter:
    """a diffusers AudioLDMPipeline folder (unet/, vae/, text_encoder/, tokenizer/, vocoder/, scheduler/)"""

    def __call__(self, sources: Sequence[Path], *, out: Path, recipe: str | None, overrides: Sequence[str],
                 registry: Any) -> Any:
        import torch

        from tta_core.importing import Imported

        if len(sources) != 1 or not Path(sources[0]).is_dir():
            raise UsageError("audioldm-diffusers takes one folder: the pipeline's (save_pretrained or a hub snapshot)")
        if recipe is not None:
            raise UsageError("audioldm-diffusers writes its recipe from the pipeline's configs; adjust it with --set")
        folder = Path(sources[0])
        missing = [p for p in PARTS if not (folder / p).is_dir()]
        if missing:
            raise UsageError(f"{folder} is not an AudioLDM pipeline folder: no {', '.join(p + '/' for p in missing)}")
        unet_cfg, vae_cfg = _config(folder, "unet"), _config(folder, "vae")
        text_cfg, voc_cfg = _config(folder, "text_encoder"), _config(folder, "vocoder")
        sched = _config(folder, "scheduler", "scheduler_config.json")
        notes = []

        hop = math.prod(voc_cfg.get("upsample_rates", [5, 4, 2, 2, 2]))
        rate = int(voc_cfg.get("sampling_rate", 16000))
        vae_scale = 2 ** (len(vae_cfg.get("block_out_channels", [1])) - 1)
        duration = float(unet_cfg.get("sample_size", 256)) * vae_scale * hop / rate
        beta = sched.get("beta_schedule", "linear")
        if beta not in _BETAS or sched.get("trained_betas") is not None:
            raise UsageError(f"scheduler: beta_schedule {beta!r} (or trained_betas) has no vp_discrete equivalent")
        prediction = sched.get("prediction_type", "epsilon")
        if prediction not in _PREDICTIONS:
            raise UsageError(f"scheduler: prediction_type {prediction!r} is not one of {', '.join(_PREDICTIONS)}")
        for key in ("clip_sample", "thresholding", "rescale_betas_zero_snr"):
            if sched.get(key):
                notes.append(f"scheduler: {key} is set in the pipeline; tta's DDIM does not do it, outputs will differ")
        process = {
            "type": "vp_discrete", "num_train_timesteps": int(sched.get("num_train_timesteps", 1000)),
            "betas": _BETAS[beta], "beta_start": float(sched.get("beta_start", 0.0001)),
            "beta_end": float(sched.get("beta_end", 0.02)), "prediction": _PREDICTIONS[prediction],
            "spacing": sched.get("timestep_spacing", "leading"), "steps_offset": int(sched.get("steps_offset", 0)),
            "set_alpha_to_one": bool(sched.get("set_alpha_to_one", True)),
        }
        if unet_cfg.get("class_embed_type") != "simple_projection":
            raise UsageError("unet/: AudioLDM's U-Net takes the CLAP vector as a simple_projection class embedding; "
                             f"this one has class_embed_type {unet_cfg.get('class_embed_type')!r}")
        rec = _recipe(name=folder.name or "audioldm", origin=f"the diffusers AudioLDM pipeline in {folder}",
                      rate=rate, hop=hop, n_mels=int(voc_cfg.get("model_in_dim", 64)), duration=duration,
                      vae_cfg=vae_cfg, text_cfg=text_cfg, unet_cfg=unet_cfg, voc_cfg=voc_cfg, process=process,
                      out=out, overrides=overrides, where=str(folder))

        weights, sources_ = {}, {}
        vae, sources_["vae"] = _weights(folder, "vae")
        weights["vae"] = {f"vae.{k}": v for k, v in vae.items()}
        weights["vae"]["scale_factor"] = torch.tensor(float(vae_cfg.get("scaling_factor", 1.0)))
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

        from tta_core.importing import Imported, read_tensors, state_dict_of, under

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
