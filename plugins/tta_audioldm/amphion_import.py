"""``tta-run import amphion-tta FILE... --out RUN_DIR``: Amphion's text-to-audio checkpoints
(``egs/tta``) as a run directory of ``recipes/amphion_tta.yaml`` (or ``--recipe``).

The files, in any order, told apart by what they hold:

- its AutoencoderKL checkpoint (``{"model": {encoder.*, decoder.*, quant_conv.*, ...}}``, as
  Amphion's autoencoder trainer saves it) -> ``kl_vae``;
- its AudioLDM checkpoint (``{"model": {unet.input_blocks.*, ...}}``) -> ``unet2d``, T5-base
  cross-attention as in the recipe;
- optionally its HiFi-GAN generator (``{"generator": ...}``) with the vocoder's ``config.json``
  -> ``hifigan`` (otherwise the recipe's Griffin-Lim).

Each network keeps its structure (read from the weights into a diffusers configuration) and
its attention heads (Amphion's ``num_heads``, 8, at every level; ``--set
components.unet.diffusers_config.attention_head_dim=N`` otherwise). Amphion reads mels as
[mels, frames] and tta as [frames, mels]: the convolution kernels are transposed on the way
in, which makes each network compute exactly the transpose of what it computed. Latents are
not rescaled (Amphion's scale is 1). Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from tta_core.plugin import UsageError

#: Amphion's ``num_heads`` (config/audioldm.json): the weights do not hold it.
AMPHION_HEADS = 8


def _read(path: Path) -> tuple[str, Any]:
    """(what the file is, its state dict or config)."""
    import torch

    from tta_core.plugin import read_tensors

    if path.suffix == ".json":
        try:
            return "vocoder_config", json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a readable vocoder config.json ({exc})") from None
    obj = read_tensors(path, weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("generator", "model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if any(k.startswith("unet.input_blocks.") for k in state):
        return "unet", {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    if "input_blocks.0.0.weight" in state:
        return "unet", state
    if "encoder.conv_in.weight" in state and "decoder.conv_in.weight" in state:
        return "vae", state
    if any(k.startswith("conv_pre.") for k in state):  # weight-normalised or not
        return "vocoder", state
    raise UsageError(f"{path}: neither Amphion's AutoencoderKL (encoder.*, decoder.*), its AudioLDM "
                     "(unet.input_blocks.*) nor a HiFi-GAN generator (conv_pre.*)")


def _vocoder_config(h: Mapping[str, Any]) -> dict:
    """SpeechT5HifiGan's configuration of a HiFi-GAN config.json (jik876's keys)."""
    if str(h.get("resblock", "1")) != "1":
        raise UsageError("the vocoder uses HiFi-GAN's resblock type 2; transformers' SpeechT5HifiGan has type 1 only")
    try:
        return {"model_in_dim": int(h["num_mels"]), "sampling_rate": int(h["sampling_rate"]),
                "upsample_rates": list(h["upsample_rates"]), "upsample_kernel_sizes": list(h["upsample_kernel_sizes"]),
                "upsample_initial_channel": int(h["upsample_initial_channel"]),
                "resblock_kernel_sizes": list(h["resblock_kernel_sizes"]),
                "resblock_dilation_sizes": [list(d) for d in h["resblock_dilation_sizes"]], "normalize_before": False}
    except KeyError as exc:
        raise UsageError(f"the vocoder's config.json has no {exc.args[0]!r}") from None


class AmphionImporter:
    """Amphion's TTA checkpoints: its AutoencoderKL and AudioLDM .pt files (and optionally its HiFi-GAN generator + config.json)"""

    def __call__(self, sources: Sequence[Path], *, out: Path, recipe: str | None, overrides: Sequence[str],
                 registry: Any) -> Any:
        import math

        import torch

        from tta_core.plugin import Imported, load_recipe, resolve_roles, shipped_recipe

        from . import ldm_layout as L

        found: dict[str, tuple[Path, Any]] = {}
        for src in sources:
            kind, content = _read(Path(src))
            if kind in found:
                raise UsageError(f"two {kind} files: {found[kind][0]} and {src}")
            found[kind] = (Path(src), content)
        if "unet" not in found and "vae" not in found:
            raise UsageError("amphion-tta needs Amphion's AutoencoderKL checkpoint, its AudioLDM checkpoint, or both")
        if ("vocoder" in found) != ("vocoder_config" in found):
            raise UsageError("a HiFi-GAN vocoder needs both its generator checkpoint and its config.json")
        recipe_path = Path(recipe) if recipe else shipped_recipe("amphion_tta.yaml")
        rec = load_recipe(recipe_path, overrides)
        roles = resolve_roles(rec, registry)
        names = {"vae": roles["autoencoder"], "unet": roles["denoiser"], "vocoder": roles.get("vocoder")}
        notes, weights, where, extra = [], {}, {}, []

        if "vae" in found:
            path, state = found["vae"]
            cfg = L.vae_config(state, scaling_factor=1.0)  # Amphion does not rescale its latents
            extra.append(f"components.{names['vae']}={json.dumps({'type': 'kl_vae', 'diffusers_config': cfg})}")
            weights["vae"] = {**{f"vae.{k}": v for k, v in L.transpose_kernels(L.vae_weights(state)).items()},
                              "scale_factor": torch.tensor(1.0)}
            where["vae"] = str(path)
        if "unet" in found:
            path, state = found["unet"]
            cfg = L.unet_config(state, heads=AMPHION_HEADS, sample_size=None)
            context = cfg["cross_attention_dim"]
            if not isinstance(context, int):
                raise UsageError(f"{path}: this U-Net attends to no text context; Amphion's attends to T5 tokens")
            node = {"type": "unet2d", "diffusers_config": cfg, "cross_attention_dim": context}
            extra.append(f"components.{names['unet']}={json.dumps(node)}")
            weights["unet"] = {f"unet.{k}": v for k, v in
                               L.transpose_kernels(L.unet_weights(state, cfg["layers_per_block"])).items()}
            where["unet"] = str(path)
            notes.append(f"U-Net attention: {AMPHION_HEADS} heads at every level (Amphion's num_heads)")
        if "vocoder" in found:
            if names["vocoder"] is None:
                raise UsageError(f"{recipe_path} has no vocoder component for the HiFi-GAN")
            path, state = found["vocoder"]
            cfg = L.hifigan_config(state, base=_vocoder_config(found["vocoder_config"][1]))
            extra.append(f"components.{names['vocoder']}={json.dumps({'type': 'hifigan', 'config': cfg})}")
            weights["vocoder"] = {f"net.{k}": v for k, v in L.hifigan_weights(state, cfg["model_in_dim"]).items()}
            where["vocoder"] = str(path)
            hop = math.prod(cfg["upsample_rates"])
            audio = rec.get("audio") or {}
            if (audio.get("mel") or {}).get("hop") != hop or audio.get("sample_rate") != cfg["sampling_rate"]:
                notes.append(f"the vocoder is {cfg['sampling_rate']} Hz with hop {hop}: the recipe's audio section "
                             "must match (--set audio.sample_rate=..., audio.mel.hop=...)")
        rec = load_recipe(recipe_path, [*extra, *overrides])  # the user's --set last: theirs wins
        weights = {names[k]: v for k, v in weights.items()}
        where = {names[k]: v for k, v in where.items()}
        return Imported(recipe=rec, weights=weights, sources=where, notes=notes)
