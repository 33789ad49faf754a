"""``unet2d``: the AudioLDM denoiser, diffusers' UNet2DConditionModel.

Conditioning (tta_core.interfaces.Conditioning):
- ``tokens`` [B, L, D] via cross-attention (T5, CLIP): set ``cross_attention_dim: D``;
- ``pooled`` [B, D'] via the timestep embedding (CLAP's FiLM in AudioLDM 1, or a pooled T5
  vector): set ``pooled_dim: D'``; AudioLDM concatenates it to the time embedding
  (``pooled_concat: true``), or it is added;
- both at once.
Latents whose height or width is not a multiple of 2 ** (levels - 1) are padded and the
output cropped back.

``patch_size: p`` folds each p x p patch of the latent into channels before the network and
unfolds the output (pixel (un)shuffle, as DiT-style models patchify), so the U-Net runs at
1 / p of the latent's height and width: about p ** 2 times less compute in the convolutions,
the lever for training on a CPU. ``patch_size: [pt, pf]`` patches time (height) and frequency
(width) by different factors, e.g. ``[1, 2]`` keeps every latent frame and folds pairs of
frequency rows.

``diffusers_config``: a whole UNet2DConditionModel configuration (a diffusers ``unet/config.json``,
as ``tta-run import audioldm-diffusers`` writes it into the recipe) builds that network
exactly; ``cross_attention_dim`` / ``pooled_dim`` still say which conditioning it takes, and
the structural arguments (channels, levels, heads, groups) are then not used. A configuration
whose network needs other inputs (``addition_embed_type``, ``encoder_hid_dim``,
``time_cond_proj_dim``, ``num_class_embeds``, a gated ``attention_type``), or whose class
embedding or cross-attention width disagrees with ``pooled_dim`` / ``cross_attention_dim``, is
refused naming the field. Such a network takes latents at their own size, unpadded, as its
pipeline gives them (diffusers upsamples each level to its skip connection's size).

The network is tta's own (:mod:`tta_audioldm.nets`: diffusers' parameter names and outputs,
without importing diffusers) for every configuration it covers, which is every one built here
and the AudioLDM-style ones a ``diffusers_config`` gives; any other is diffusers' class.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from tta_core.plugin import Conditioning


class UNet2D(torch.nn.Module):
    #: where adapters go by default (tta_core.adapters): the attention projections, as diffusers' LoRA
    adapter_targets = ("*.to_q", "*.to_k", "*.to_v", "*.to_out.0")

    def __init__(
        self,
        in_channels: int = 8,
        channels: Sequence[int] = (128, 256, 384, 640),
        layers_per_block: int = 2,
        attention_levels: Sequence[bool] | None = None,
        cross_attention_dim: int | None = None,
        pooled_dim: int | None = None,
        pooled_concat: bool = False,
        head_dim: int = 32,  # channels per attention head
        norm_groups: int = 32,
        patch_size: int | Sequence[int] = 1,
        gradient_checkpointing: bool = False,
        diffusers_config: dict | None = None,
    ):
        super().__init__()
        channels = tuple(channels)
        patch = [patch_size] * 2 if isinstance(patch_size, (int, float)) else list(patch_size)
        if len(patch) != 2 or any(int(p) != p or p < 1 for p in patch):
            raise ValueError(f"unet2d: patch_size is a whole number of at least 1, or two of them "
                             f"(time, frequency), got {patch_size}")
        self.patch = (int(patch[0]), int(patch[1]))
        if cross_attention_dim is None and pooled_dim is None:
            raise ValueError("unet2d needs cross_attention_dim (token conditioning), pooled_dim (pooled), or both")
        if diffusers_config is not None:
            if self.patch != (1, 1):
                raise ValueError("unet2d: patch_size is for networks built here, not with diffusers_config")
            _check_diffusers_config(dict(diffusers_config), cross_attention_dim, pooled_dim)
            self.unet = build_unet(dict(diffusers_config))
            # sizes as given, as the network's own pipeline passes them (diffusers upsamples to each skip's size)
            self._finish(cross_attention_dim, pooled_dim, (1, 1), gradient_checkpointing)
            return
        attention = tuple(attention_levels) if attention_levels is not None else (True,) * len(channels)
        if len(attention) != len(channels):
            raise ValueError(f"unet2d: attention_levels has {len(attention)} entries for {len(channels)} levels")
        cross = cross_attention_dim is not None
        down = tuple(("CrossAttnDownBlock2D" if cross else "AttnDownBlock2D") if a else "DownBlock2D" for a in attention)
        up = tuple(("CrossAttnUpBlock2D" if cross else "AttnUpBlock2D") if a else "UpBlock2D" for a in reversed(attention))
        self.unet = build_unet(dict(
            in_channels=in_channels * self.patch[0] * self.patch[1], out_channels=in_channels * self.patch[0] * self.patch[1],
            down_block_types=down, up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn" if cross else "UNetMidBlock2D",
            block_out_channels=channels, layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim or channels[-1],
            # diffusers' attention_head_dim is the number of heads (a historical misnomer)
            attention_head_dim=[max(1, c // head_dim) for c in channels],
            norm_num_groups=norm_groups,
            class_embed_type="simple_projection" if pooled_dim else None,
            projection_class_embeddings_input_dim=pooled_dim,
            class_embeddings_concat=pooled_concat,
        ))
        self._finish(cross_attention_dim, pooled_dim, tuple(p * 2 ** (len(channels) - 1) for p in self.patch),
                     gradient_checkpointing)

    def _finish(self, cross_attention_dim, pooled_dim, multiple: tuple[int, int], gradient_checkpointing: bool) -> None:
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.cross_attention_dim, self.pooled_dim = cross_attention_dim, pooled_dim
        self.multiple = multiple  # latent heights / widths are padded up to multiples of these, the output cropped

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple[0], -w % self.multiple[1]
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        kwargs = {}
        if self.cross_attention_dim is not None:
            if cond.tokens is None or cond.tokens.shape[-1] != self.cross_attention_dim:
                got = None if cond.tokens is None else cond.tokens.shape[-1]
                raise ValueError(f"unet2d expects {self.cross_attention_dim}-wide token conditioning, got {got}: "
                                 "set cross_attention_dim to the conditioner's width")
            kwargs["encoder_hidden_states"] = cond.tokens
            if cond.mask is not None:
                kwargs["encoder_attention_mask"] = cond.mask
        else:
            kwargs["encoder_hidden_states"] = None
        if self.pooled_dim is not None:
            if cond.pooled is None or cond.pooled.shape[-1] != self.pooled_dim:
                got = None if cond.pooled is None else cond.pooled.shape[-1]
                raise ValueError(f"unet2d expects a {self.pooled_dim}-wide pooled vector, got {got}")
            kwargs["class_labels"] = cond.pooled
        out = _unpatch(self.unet(_patch(x, self.patch), t, **kwargs).sample, self.patch)
        return out[..., :h, :w]


def _check_diffusers_config(cfg: dict, cross_attention_dim: int | None, pooled_dim: int | None) -> None:
    """Refuse a configuration whose network needs inputs unet2d does not give it (it passes the
    latent, the timestep, the tokens as ``encoder_hidden_states`` and the pooled vector as
    ``class_labels``, nothing else), or that disagrees with the conditioning it is told of."""
    def get(key: str, default=None):
        return cfg.get(key, default)

    needs = [f"{key}={get(key)!r}" for key in ("addition_embed_type", "encoder_hid_dim", "encoder_hid_dim_type",
                                                 "time_cond_proj_dim", "num_class_embeds") if get(key) is not None]
    if str(get("attention_type", "default")) != "default":
        needs.append(f"attention_type={get('attention_type')!r}")
    if needs:
        raise ValueError(f"unet2d: diffusers_config sets {', '.join(needs)}: that network takes inputs unet2d "
                         "does not give (it passes tokens and a pooled vector only)")
    if int(get("in_channels", 4)) != int(get("out_channels", 4)):
        raise ValueError(f"unet2d: diffusers_config has in_channels {get('in_channels', 4)} and out_channels "
                         f"{get('out_channels', 4)}; a denoiser's output has the shape of its input")
    pooled = get("class_embed_type")
    if pooled_dim is not None:
        if pooled not in ("projection", "simple_projection"):
            raise ValueError(f"unet2d: pooled_dim is {pooled_dim} but diffusers_config's class_embed_type is "
                             f"{pooled!r}; "
                             "a pooled vector goes in through a 'projection' or 'simple_projection' class embedding")
        if get("projection_class_embeddings_input_dim") != pooled_dim:
            raise ValueError(f"unet2d: pooled_dim is {pooled_dim} but diffusers_config's "
                             f"projection_class_embeddings_input_dim is {get('projection_class_embeddings_input_dim')}")
    elif pooled is not None:
        raise ValueError(f"unet2d: diffusers_config has a class embedding ({pooled!r}) but pooled_dim is not set: "
                         "set it to the width of the vector the network takes")
    if cross_attention_dim is not None and get("cross_attention_dim", 1280) != cross_attention_dim:
        raise ValueError(f"unet2d: cross_attention_dim is {cross_attention_dim} but diffusers_config's is "
                         f"{get('cross_attention_dim', 1280)}")


def _patch(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C * pt * pf, H / pt, W / pf], channels ordered as pixel_unshuffle's
    (square patches are exactly pixel_unshuffle, so weights trained with them still load)."""
    pt, pf = patch
    if pt == pf == 1:
        return x
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // pt, pt, w // pf, pf).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * pt * pf, h // pt, w // pf)


def _unpatch(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    pt, pf = patch
    if pt == pf == 1:
        return x
    b, c, h, w = x.shape
    x = x.reshape(b, c // (pt * pf), pt, pf, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (pt * pf), h * pt, w * pf)


def build_unet(config: dict) -> torch.nn.Module:
    """The U-Net of a diffusers configuration: tta's own where it covers it, else diffusers'
    (with the attention processor below)."""
    from .nets import UNet2DConditionModel, unet_unsupported

    if unet_unsupported(config) is None:
        return UNet2DConditionModel(**config)
    from diffusers import UNet2DConditionModel as DiffusersUNet

    net = DiffusersUNet.from_config(config)
    net.set_attn_processor(_attention_processor())
    return net


def _attention_processor():
    """diffusers' scaled-dot-product attention with the kernel
    :func:`tta_audioldm.nets.attention_kernel` picks (torch's plain math kernel for a CPU
    training step over short sequences), as tta's own networks attend. Chosen per call, inside
    the processor, so that gradient checkpointing recomputes with the same kernel."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from .nets import attention_kernel

    class CPUAttention(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     *args, **kwargs):
            positions = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[2:])
            with attention_kernel(hidden_states.device, positions):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                        *args, **kwargs)

    return CPUAttention()
