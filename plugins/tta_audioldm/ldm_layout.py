"""Weights in the latent-diffusion code's layout (CompVis LDM, as AudioLDM and Amphion's TTA
keep it) read into the diffusers / transformers networks tta's components wrap.

Each ``*_config`` function reads a network's structure from its weights (a state dict with the
component's own prefix taken off) and returns the diffusers or transformers configuration that
builds the same network; each ``*_weights`` function renames the weights to that network's
names. What the weights cannot tell (attention heads, the vocoder's strides) is an argument.

- U-Net (``openaimodel.UNetModel``: ``input_blocks`` / ``middle_block`` / ``output_blocks``,
  ``film_emb`` for AudioLDM's CLAP FiLM) -> ``UNet2DConditionModel``. The original splits
  attention into heads of a fixed width (``num_head_channels``: 32 in AudioLDM S and M, 64 in
  L), so a level with C channels has C / width heads; the configuration keeps that (diffusers'
  ``attention_head_dim`` holds head *counts*), so outputs match the original code.
- VAE (``Encoder`` / ``Decoder`` with ``down.i.block.j``, ``mid.attn_1`` as 1x1 convolutions)
  -> ``AutoencoderKL`` (``down_blocks.i.resnets.j``, ``mid_block.attentions.0.to_q`` linear).
- CLAP text tower (laion-clap's ``text_branch`` RoBERTa + ``text_projection`` MLP)
  -> ``ClapTextModelWithProjection``.
- HiFi-GAN (``ups.i``, possibly still weight-normalised) -> ``SpeechT5HifiGan``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from tta_core.plugin import UsageError


def _int_keys(state: Mapping[str, Any], pattern: str) -> list[int]:
    """The distinct integers ``pattern`` (a regex with one group) captures in the keys, sorted."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


# -- U-Net ------------------------------------------------------------------------------------

_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
           ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _resnet(rest: str) -> str:
    for old, new in _RESNET:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _unet_levels(state: Mapping[str, Any]) -> tuple[list[int], int, list[bool]]:
    """Block widths, resnets per level and which levels attend, read from ``input_blocks``."""
    if "input_blocks.0.0.weight" not in state:
        raise UsageError("not a latent-diffusion U-Net: no input_blocks.0.0.weight")
    widths, attends, per_level, count = [], [], [], 0
    level_attends = False
    for i in _int_keys(state, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in state:  # a downsampler closes the level
            per_level.append(count)
            attends.append(level_attends)
            count, level_attends = 0, False
            continue
        widths_here = state[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
        if count == 0:
            widths.append(int(widths_here))
        count += 1
        level_attends = level_attends or any(k.startswith(f"input_blocks.{i}.1.") for k in state)
    per_level.append(count)
    attends.append(level_attends)
    if len(set(per_level)) != 1:
        raise UsageError(f"U-Net levels have different numbers of resnets ({per_level}); diffusers needs one")
    return widths, per_level[0], attends


def audioldm_head_width(state: Mapping[str, Any]) -> int:
    """AudioLDM's ``num_head_channels``, which its weights do not hold: 64 for L (256 base
    channels), 32 for S (128) and M (192), as audioldm/utils.py configures them."""
    return 64 if int(state["input_blocks.0.0.weight"].shape[0]) >= 256 else 32


def unet_config(state: Mapping[str, Any], *, head_width: int | None = None, heads: int | None = None,
                sample_size: Any = 64) -> dict:
    """The UNet2DConditionModel configuration of an LDM U-Net's weights. Its attention heads:
    ``head_width`` channels each (the original's ``num_head_channels``, AudioLDM's way), or
    ``heads`` at every level (its ``num_heads``, Amphion's way)."""
    if (head_width is None) == (heads is None):
        raise ValueError("give one of head_width (channels per head) or heads (heads per level)")
    widths, layers, attends = _unet_levels(state)
    time_dim = int(state["time_embed.0.weight"].shape[0])
    emb_in = int(state["input_blocks.1.0.emb_layers.1.weight"].shape[1])
    # use_scale_shift_norm: each resnet's embedding projection gives a scale and a shift
    scale_shift = (int(state["input_blocks.1.0.emb_layers.1.weight"].shape[0])
                   == 2 * int(state["input_blocks.1.0.out_layers.3.weight"].shape[0]))
    keys = [k for k in state if k.endswith("attn2.to_k.weight")]
    # AudioLDM gives its attention no context: each level attends to itself (a context as wide
    # as the level); Amphion's attends to T5 tokens of one width
    own = all(state[k].shape[1] == state[k.replace("to_k", "to_q")].shape[1] for k in keys)
    contexts = {int(state[k].shape[1]) for k in keys}
    if not own and len(contexts) != 1:
        raise UsageError(f"U-Net cross-attention reads contexts of several widths {sorted(contexts)}")
    proj = next((k for k in state if k.endswith(".proj_in.weight")), None)
    depth = max((int(m.group(1)) + 1 for k in state if (m := re.search(r"\.transformer_blocks\.(\d+)\.", k))), default=1)
    cfg: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": int(state["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(state["out.2.weight"].shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": widths,
        "layers_per_block": layers,
        "cross_attention_dim": widths if own else contexts.pop(),
        "attention_head_dim": [max(1, w // head_width) for w in widths] if head_width else int(heads),
        "transformer_layers_per_block": depth,
        "use_linear_projection": bool(proj and state[proj].ndim == 2),
        "norm_num_groups": 32,  # the LDM code's normalization() is GroupNorm32: 32 groups, always
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "resnet_time_scale_shift": "scale_shift" if scale_shift else "default",
    }
    if int(state["time_embed.0.weight"].shape[1]) != widths[0]:
        raise UsageError(f"the U-Net's timestep embedding is {int(state['time_embed.0.weight'].shape[1])} wide and its "
                         f"first level {widths[0]}: diffusers' UNet2DConditionModel needs them equal "
                         "(a channel_mult starting at 1)")
    if time_dim != 4 * widths[0]:  # diffusers' default is 4 x the first level's width, as the LDM code's
        cfg["time_embedding_dim"] = time_dim
    if "film_emb.weight" in state:
        cfg["class_embed_type"] = "simple_projection"
        cfg["projection_class_embeddings_input_dim"] = int(state["film_emb.weight"].shape[1])
        cfg["class_embeddings_concat"] = emb_in == 2 * time_dim
    return cfg


def unet_weights(state: Mapping[str, Any], layers_per_block: int) -> dict:
    """An LDM U-Net's weights under UNet2DConditionModel's names."""
    out, left = {}, []
    per = layers_per_block + 1
    fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "film_emb.": "class_embedding.", "input_blocks.0.0.": "conv_in.",
             "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for key, value in state.items():
        new = next((n + key[len(o):] for o, n in fixed.items() if key.startswith(o)), None)
        if new is None and (m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)):
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            block, layer = (i - 1) // per, (i - 1) % per
            if rest.startswith("op."):
                new = f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
            elif j == 0:
                new = f"down_blocks.{block}.resnets.{layer}.{_resnet(rest)}"
            elif j == 1:
                new = f"down_blocks.{block}.attentions.{layer}.{rest}"
        elif new is None and (m := re.match(r"middle_block\.(\d+)\.(.*)", key)):
            j, rest = int(m.group(1)), m.group(2)
            new = {0: f"mid_block.resnets.0.{_resnet(rest)}", 1: f"mid_block.attentions.0.{rest}",
                   2: f"mid_block.resnets.1.{_resnet(rest)}"}.get(j)
        elif new is None and (m := re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)):
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            block, layer = i // per, i % per
            if j > 0 and rest.startswith("conv."):  # the level's upsampler (after its attention, if any)
                new = f"up_blocks.{block}.upsamplers.0.{rest}"
            elif j == 0:
                new = f"up_blocks.{block}.resnets.{layer}.{_resnet(rest)}"
            elif j == 1:
                new = f"up_blocks.{block}.attentions.{layer}.{rest}"
        if new is None:
            left.append(key)
        else:
            out[new] = value
    return {**out, **{f"<unmapped>.{k}": state[k] for k in left}}


def transpose_kernels(state: Mapping[str, Any]) -> dict:
    """Weights for the same network run on transposed images: every 2-D convolution kernel
    transposed. A network of convolutions, group norms, nearest-neighbour resampling,
    symmetric padding and attention without positions then computes the transpose of what it
    did (Amphion's networks read mels as [mels, frames], tta's as [frames, mels])."""
    return {k: (v.transpose(-1, -2).contiguous() if v.ndim == 4 else v) for k, v in state.items()}


# -- VAE --------------------------------------------------------------------------------------

_VAE_ATTENTION = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def vae_config(state: Mapping[str, Any], *, scaling_factor: float) -> dict:
    """The AutoencoderKL configuration of an LDM first-stage model's weights."""
    if "encoder.conv_in.weight" not in state:
        raise UsageError("not a latent-diffusion autoencoder: no encoder.conv_in.weight")
    if any(re.match(r"(en|de)coder\.(down|up)\.\d+\.attn\.", k) for k in state):
        raise UsageError("the autoencoder has attention inside its levels (attn_resolutions); "
                         "kl_vae's diffusers AutoencoderKL has it only in the middle")
    levels = _int_keys(state, r"encoder\.down\.(\d+)\.")
    z = int(state["decoder.conv_in.weight"].shape[1])
    embed = int(state["post_quant_conv.weight"].shape[1])
    if embed != z:
        raise UsageError(f"the autoencoder's embed_dim ({embed}) differs from z_channels ({z}); "
                         "diffusers' AutoencoderKL needs them equal")
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels],
        "layers_per_block": len(_int_keys(state, r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": z,
        "norm_num_groups": 32,  # the LDM autoencoder's Normalize(): GroupNorm of 32 groups, always
        "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1.") for k in state),
        "scaling_factor": float(scaling_factor),
    }


def vae_weights(state: Mapping[str, Any]) -> dict:
    """An LDM first-stage model's encoder/decoder weights under AutoencoderKL's names
    (other entries, a training loss's discriminator say, are left out)."""
    levels = len(_int_keys(state, r"decoder\.up\.(\d+)\."))
    out = {}
    for key, value in state.items():
        side, _, rest = key.partition(".")
        if side in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        if side not in ("encoder", "decoder"):
            continue
        if rest.startswith("norm_out."):
            new = "conv_norm_out." + rest[len("norm_out."):]
        elif m := re.match(r"(down|up)\.(\d+)\.(block|downsample|upsample)\.(.*)", rest):
            kind, i, part, tail = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            i = i if kind == "down" else levels - 1 - i  # the decoder's levels run the other way
            if part == "block":
                j, _, tail = tail.partition(".")
                new = f"{kind}_blocks.{i}.resnets.{j}.{tail.replace('nin_shortcut.', 'conv_shortcut.')}"
            else:
                new = f"{kind}_blocks.{i}.{kind}samplers.0.{tail}"
        elif m := re.match(r"mid\.block_(\d+)\.(.*)", rest):
            new = f"mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2).replace('nin_shortcut.', 'conv_shortcut.')}"
        elif rest.startswith("mid.attn_1."):
            tail = rest[len("mid.attn_1."):]
            old = next(o for o in _VAE_ATTENTION if tail.startswith(o))
            new = "mid_block.attentions.0." + _VAE_ATTENTION[old] + tail[len(old):]
            if value.ndim == 4:  # 1x1 convolutions -> linear layers
                value = value[:, :, 0, 0]
        else:
            new = rest
        out[f"{side}.{new}"] = value
    return out


# -- CLAP text tower --------------------------------------------------------------------------


def clap_text_config(state: Mapping[str, Any], *, heads: int | None = None) -> dict:
    """The ClapTextConfig of laion-clap text-tower weights (``text_branch.*``,
    ``text_projection.*``); RoBERTa's head width (64) unless ``heads`` is given."""
    if "text_branch.embeddings.word_embeddings.weight" not in state:
        raise UsageError("no CLAP text tower (text_branch.embeddings.word_embeddings.weight)")
    vocab, hidden = state["text_branch.embeddings.word_embeddings.weight"].shape
    return {
        "vocab_size": int(vocab), "hidden_size": int(hidden),
        "num_hidden_layers": len(_int_keys(state, r"text_branch\.encoder\.layer\.(\d+)\.")),
        "num_attention_heads": int(heads or max(1, hidden // 64)),
        "intermediate_size": int(state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state["text_branch.embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state["text_branch.embeddings.token_type_embeddings.weight"].shape[0]),
        "projection_dim": int(state["text_projection.2.weight"].shape[0]),
        "projection_hidden_act": "relu",
        "layer_norm_eps": 1e-5,  # RoBERTa's, which laion-clap's text branch is
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    }


def clap_text_weights(state: Mapping[str, Any]) -> dict:
    """laion-clap text-tower weights under ClapTextModelWithProjection's names."""
    import torch

    out = {}
    for key, value in state.items():
        if key.startswith("text_branch."):
            out["text_model." + key[len("text_branch."):]] = value
        elif m := re.match(r"text_projection\.(\d+)\.(.*)", key):
            out[f"text_projection.linear{1 if m.group(1) == '0' else 2}.{m.group(2)}"] = value
    # buffers ClapTextModel saves and RoBERTa (newer transformers) does not: their fixed values
    positions = int(state["text_branch.embeddings.position_embeddings.weight"].shape[0])
    out.setdefault("text_model.embeddings.position_ids", torch.arange(positions).expand(1, -1))
    out.setdefault("text_model.embeddings.token_type_ids", torch.zeros(1, positions, dtype=torch.long))
    return out


# -- HiFi-GAN ---------------------------------------------------------------------------------


def fold_weight_norm(state: Mapping[str, Any]) -> dict:
    """``weight_g`` / ``weight_v`` pairs (torch's weight_norm, dim 0) folded into ``weight``
    (also the ``parametrizations.weight.original0/1`` spelling)."""
    out = dict(state)
    for key in list(out):
        for g_name, v_name in (("weight_g", "weight_v"), ("parametrizations.weight.original0",
                                                          "parametrizations.weight.original1")):
            if key.endswith(g_name):
                stem = key[: -len(g_name)]
                g, v = out.pop(key), out.pop(stem + v_name)
                norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
                out[stem + "weight"] = v * (g / norm)
    return out


def hifigan_config(state: Mapping[str, Any], *, base: Mapping[str, Any]) -> dict:
    """SpeechT5HifiGan's configuration of HiFi-GAN weights: channels, kernels and resblocks
    from the weights, strides and dilations from ``base`` (AudioLDM's unless told)."""
    state = fold_weight_norm(state)
    ups = _int_keys(state, r"ups\.(\d+)\.weight")
    if not ups:
        raise UsageError("no HiFi-GAN generator (ups.0.weight)")
    kernels = [int(state[f"ups.{i}.weight"].shape[2]) for i in ups]
    n_res = len(_int_keys(state, r"resblocks\.(\d+)\."))
    per_level = n_res // len(ups)
    res_kernels = [int(state[f"resblocks.{j}.convs1.0.weight"].shape[2]) for j in range(per_level)]
    cfg = dict(base)
    if len(cfg.get("upsample_rates", [])) != len(ups):
        raise UsageError(f"the vocoder has {len(ups)} upsampling layers; the strides given are {cfg.get('upsample_rates')}")
    cfg.update(model_in_dim=int(state["conv_pre.weight"].shape[1]),
               upsample_initial_channel=int(state["conv_pre.weight"].shape[0]),
               upsample_kernel_sizes=kernels, resblock_kernel_sizes=res_kernels, normalize_before=False)
    return cfg


def hifigan_weights(state: Mapping[str, Any], n_mels: int) -> dict:
    """HiFi-GAN generator weights under SpeechT5HifiGan's names."""
    import torch

    out = {}
    for key, value in fold_weight_norm(state).items():
        out[re.sub(r"^ups\.", "upsampler.", key)] = value
    out.setdefault("mean", torch.zeros(n_mels))  # unused with normalize_before=False
    out.setdefault("scale", torch.ones(n_mels))
    return out
