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


class DiffusersImporter:
    """a diffusers AudioLDMPipeline folder (unet/, vae/, text_encoder/, tokenizer/, vocoder/, scheduler/)"""

    def __call__(self, sources: Sequence[Path], *, out: Path, recipe: str | None, overrides: Sequence[str],
                 registry: Any) -> Any:
        import torch

        from tta_core.importing import Imported
        from tta_core.recipe import Recipe, apply_override
        from tta_core.yamlio import load_yaml

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
        data = {
            "name": f"{folder.name or 'audioldm'}",
            "description": f"imported from the diffusers AudioLDM pipeline in {folder}",
            "audio": {"sample_rate": rate, "duration": duration,
                      "mel": {"n_fft": 1024, "hop": hop, "win": 1024, "n_mels": int(voc_cfg.get("model_in_dim", 64)),
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
        node = load_yaml(json.dumps(data), str(folder))  # location-keeping nodes, as a recipe file gives
        problems = []
        for text in overrides:
            try:
                apply_override(node, text)
            except Exception as exc:
                problems.append(str(exc))
        if problems:
            raise UsageError("--set: " + "; ".join(problems))
        rec = Recipe(path=out / "recipe.yaml", data=node, overrides=tuple(overrides))

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
