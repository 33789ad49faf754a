"""tta's own U-Net and KL autoencoder: the networks of diffusers' ``UNet2DConditionModel`` and
``AutoencoderKL`` for the blocks AudioLDM-style models are made of, with diffusers' parameter
names, so a checkpoint of either loads into the other unchanged and the two compute the same
output (tested on identical weights and inputs).

Why they exist: a process that builds a network through diffusers imports diffusers, which
imports every model it has, peft, transformers and torch's compiler: about 5 s on 2 CPU cores
before the first step, more than ten sampling steps of a small model. These classes need torch
alone. A configuration they do not cover (see :func:`unet_unsupported` and
:func:`vae_unsupported`) is built by diffusers, as before.

Covered:
- U-Net: ``DownBlock2D`` / ``CrossAttnDownBlock2D`` / ``AttnDownBlock2D`` down,
  ``UpBlock2D`` / ``CrossAttnUpBlock2D`` / ``AttnUpBlock2D`` up, ``UNetMidBlock2DCrossAttn`` /
  ``UNetMidBlock2D`` / no middle; sinusoidal timesteps; class embeddings ``simple_projection``
  and ``projection``, added or concatenated; ``default`` and ``scale_shift`` time norms;
  convolutional or linear transformer projections; token masks.
- Autoencoder: ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` with or without the middle
  attention and the quant convolutions.

``to_diffusers()`` gives the diffusers network with these weights (for ``tta-run export``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tta_core.plugin import draw_normal

from .pretrained import AttrDict as Config

#: On a CPU, attention over at most this many positions trains on torch's plain math kernel
SHORT_ATTENTION = 256

UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu",
    "norm_num_groups": 32, "norm_eps": 1e-05, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}

VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215, "shift_factor": None,
    "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}

_ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
_DOWN = {"DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D"}
_UP = {"UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D"}
_MID = {"UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None}


def _config(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> Config:
    """A network's configuration: the library's defaults, updated by the keys given (diffusers'
    bookkeeping keys, ``_class_name`` and the like, left out); read as keys or attributes."""
    cfg = Config(defaults)
    cfg.update({k: v for k, v in given.items() if not k.startswith("_")})
    return cfg


def _checked_config(network: str, library: str, defaults: Mapping[str, Any], unsupported: Any,
                    given: Mapping[str, Any]) -> Config:
    """:func:`_config`, or ValueError naming the field when ``unsupported`` refuses it."""
    reason = unsupported(given)
    if reason is not None:
        raise ValueError(f"tta's {network} does not build {reason}: use {library}' class")
    return _config(defaults, given)


def unet_unsupported(config: Mapping[str, Any]) -> str | None:
    """Why :class:`UNet2DConditionModel` cannot build a diffusers U-Net configuration (the field
    and its value), or None when it can."""
    cfg = _config(UNET_DEFAULTS, config)
    checks = [
        ("down_block_types", lambda v: set(v) <= _DOWN),
        ("up_block_types", lambda v: set(v) <= _UP),
        ("mid_block_type", lambda v: v in _MID),
        ("act_fn", lambda v: v in _ACTIVATIONS),
        ("time_embedding_type", lambda v: v == "positional"),
        ("class_embed_type", lambda v: v in (None, "simple_projection", "projection")),
        ("resnet_time_scale_shift", lambda v: v in ("default", "scale_shift")),
        ("only_cross_attention", lambda v: not any(v) if isinstance(v, (list, tuple)) else not v),
        ("transformer_layers_per_block",
         lambda v: isinstance(v, int) or all(isinstance(x, int) for x in v)),
        ("norm_num_groups", lambda v: v is not None),
        ("attention_type", lambda v: v == "default"),
    ]
    for key in ("num_class_embeds", "addition_embed_type", "encoder_hid_dim", "encoder_hid_dim_type",
                "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
                "reverse_transformer_layers_per_block", "num_attention_heads"):
        checks.append((key, lambda v: v is None))
    checks += [("dual_cross_attention", lambda v: not v), ("resnet_skip_time_act", lambda v: not v)]
    for key, ok in checks:
        if not ok(cfg[key]):
            return f"{key}={cfg[key]!r}"
    return None


def vae_unsupported(config: Mapping[str, Any]) -> str | None:
    """Why :class:`AutoencoderKL` cannot build a diffusers autoencoder configuration, or None."""
    cfg = _config(VAE_DEFAULTS, config)
    if set(cfg["down_block_types"]) != {"DownEncoderBlock2D"}:
        return f"down_block_types={cfg['down_block_types']!r}"
    if set(cfg["up_block_types"]) != {"UpDecoderBlock2D"}:
        return f"up_block_types={cfg['up_block_types']!r}"
    if cfg["act_fn"] not in _ACTIVATIONS:
        return f"act_fn={cfg['act_fn']!r}"
    return None


# -- layers ---------------------------------------------------------------------------------------

def _run(module: nn.Module, owner: nn.Module, *args):
    """``module(*args)``, its activations recomputed in the backward pass when ``owner`` has
    gradient checkpointing on and gradients are being recorded."""
    if owner.gradient_checkpointing and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def attention_kernel(device: torch.device, positions: int) -> Any:
    """The scaled-dot-product kernel to attend with, as a context: on a CPU, a training step
    (gradients on) over short sequences (at most SHORT_ATTENTION query positions) runs torch's
    plain math kernel, which is a few percent faster there with its backward. Everywhere else
    the fused kernel wins (2-5x at AudioLDM's 1024-2048 positions), and sampling always takes it."""
    if device.type == "cpu" and torch.is_grad_enabled() and positions <= SHORT_ATTENTION:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with the kernel :func:`attention_kernel` picks."""
    with attention_kernel(q.device, q.shape[-2]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """diffusers' ``Attention`` with its scaled-dot-product processor: multi-head attention of
    ``x`` [B, N, C] (or [B, C, H, W], attended over H * W) to ``context`` (itself when None);
    ``mask`` is an additive bias [B, 1, L] over the context."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False, out_bias: bool = True, dropout: float = 0.0, norm_groups: int | None = None,
                 eps: float = 1e-5, residual: bool = False, rescale: float = 1.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.residual, self.rescale = heads, residual, float(rescale)
        self.group_norm = nn.GroupNorm(norm_groups, query_dim, eps=eps, affine=True) if norm_groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        spatial = x.ndim == 4
        if spatial:
            b, c, h, w = x.shape
            x = x.view(b, c, h * w).transpose(1, 2)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        batch, d = q.shape[0], q.shape[-1] // self.heads
        q, k, v = (t.view(batch, -1, self.heads, d).transpose(1, 2) for t in (q, k, v))
        if mask is not None:
            mask = mask.view(batch, 1, -1, mask.shape[-1])
        out = attention(q, k, v, mask).transpose(1, 2).reshape(batch, -1, self.heads * d).to(q.dtype)
        out = self.to_out[1](self.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if self.residual:
            out = out + residual
        return out / self.rescale if self.rescale != 1.0 else out


class ResnetBlock2D(nn.Module):
    """diffusers' ``ResnetBlock2D``: two 3x3 convolutions with group norms, the time embedding
    added (``default``) or as a scale and shift after the second norm (``scale_shift``)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float, groups: int,
                 act: str = "silu", time_norm: str = "default", output_scale_factor: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        self.scale_shift, self.output_scale_factor = time_norm == "scale_shift", float(output_scale_factor)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.time_emb_proj = None if temb_channels is None else \
            nn.Linear(temb_channels, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.nonlinearity = _ACTIVATIONS[act]()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            t = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
            if self.scale_shift:
                scale, shift = torch.chunk(t, 2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + t)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous())
        out = x + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


class Downsample2D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if x.shape[0] >= 64:
            x = x.contiguous()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else \
            F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * 4), nn.Dropout(dropout), nn.Linear(dim * 4, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, attention to the context (to itself when there is none), GEGLU feed-forward,
    each after a layer norm and added back."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, dim_head, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context, mask) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """diffusers' ``Transformer2DModel`` on a feature map: group norm, projection in, transformer
    blocks over the H * W positions, projection out, added to the input."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, layers: int, cross_attention_dim: int,
                 groups: int, linear: bool, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(in_channels, inner) if linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, dropout) for _ in range(layers))
        self.proj_out = nn.Linear(inner, in_channels) if linear else nn.Conv2d(inner, in_channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        inner = x.shape[1]
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, inner)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, mask)
        if self.linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, x.shape[-1]).permute(0, 3, 1, 2).contiguous()
        if not self.linear:
            x = self.proj_out(x)
        return x + residual


# -- U-Net blocks ---------------------------------------------------------------------------------

@dataclass
class _Level:
    """What one level of the U-Net is built from (diffusers' get_down_block / get_up_block arguments)."""
    kind: str
    layers: int
    temb: int
    eps: float
    groups: int
    act: str
    time_norm: str
    dropout: float
    cross_attention_dim: int | None
    heads: int  # of a transformer (diffusers' num_attention_heads)
    head_dim: int  # of a plain attention block (diffusers' attention_head_dim)
    transformer_layers: int
    linear: bool

    def resnet(self, cin: int, cout: int, scale: float = 1.0) -> ResnetBlock2D:
        return ResnetBlock2D(cin, cout, self.temb, self.eps, self.groups, self.act, self.time_norm, scale,
                             self.dropout)

    def attention(self, channels: int) -> nn.Module:
        if self.kind.startswith("CrossAttn"):
            return Transformer2DModel(self.heads, channels // self.heads, channels, self.transformer_layers,
                                      self.cross_attention_dim, self.groups, self.linear, self.dropout)
        return Attention(channels, channels // self.head_dim, self.head_dim, bias=True, eps=self.eps,
                         norm_groups=self.groups if self.time_norm == "default" else None, residual=True)


class _Block(nn.Module):
    gradient_checkpointing = False

    def _attend(self, attn: nn.Module, h: torch.Tensor, context, mask) -> torch.Tensor:
        if isinstance(attn, Transformer2DModel):
            return _run(attn, self, h, context, mask)
        return _run(attn, self, h)


class DownBlock(_Block):
    def __init__(self, level: _Level, cin: int, cout: int, downsample: bool, padding: int):
        super().__init__()
        resnets, attentions = nn.ModuleList(), nn.ModuleList()
        for i in range(level.layers):  # in diffusers' order, so that a seed draws the same weights
            resnets.append(level.resnet(cin if i == 0 else cout, cout))
            if level.kind != "DownBlock2D":
                attentions.append(level.attention(cout))
        if level.kind != "DownBlock2D":  # registered first, as diffusers does: the same order of parameters
            self.attentions = attentions
        self.resnets = resnets
        self.downsamplers = nn.ModuleList([Downsample2D(cout, padding)]) if downsample else None

    def forward(self, h, temb, context, mask):
        states = []
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attentions):
            h = _run(resnet, self, h, temb)
            if attn is not None:
                h = self._attend(attn, h, context, mask)
            states.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            states.append(h)
        return h, states


class UpBlock(_Block):
    def __init__(self, level: _Level, cin: int, cout: int, prev: int, upsample: bool):
        super().__init__()
        self.kind = level.kind
        n = level.layers
        resnets, attentions = nn.ModuleList(), nn.ModuleList()
        for i in range(n):
            resnets.append(level.resnet((prev if i == 0 else cout) + (cin if i == n - 1 else cout), cout))
            if level.kind != "UpBlock2D":
                attentions.append(level.attention(cout))
        if level.kind != "UpBlock2D":  # registered first, as diffusers does: the same order of parameters
            self.attentions = attentions
        self.resnets = resnets
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, h, skips, temb, context, mask, size):
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attentions):
            h = torch.cat([h, skips.pop()], dim=1)
            h = _run(resnet, self, h, temb)
            if attn is not None:
                h = self._attend(attn, h, context, mask)
        if self.upsamplers is not None:
            # diffusers' AttnUpBlock2D always doubles, whatever size the skip connection has
            h = self.upsamplers[0](h, None if self.kind == "AttnUpBlock2D" else size)
        return h


class MidBlock(_Block):
    """``UNetMidBlock2DCrossAttn`` (resnet, transformer, resnet), or the U-Net's ``UNetMidBlock2D``
    (one resnet: diffusers builds it without attention layers) and the autoencoder's (resnet,
    attention, resnet)."""

    def __init__(self, level: _Level, channels: int, scale: float, attention: bool | None):
        super().__init__()
        resnets = nn.ModuleList([level.resnet(channels, channels, scale)])
        if attention is not None:
            self.attentions = nn.ModuleList([level.attention(channels) if attention else None])
            resnets.append(level.resnet(channels, channels, scale))
        self.resnets = resnets

    def forward(self, h, temb=None, context=None, mask=None):
        h = _run(self.resnets[0], self, h, temb)
        for attn, resnet in zip(getattr(self, "attentions", []), self.resnets[1:]):
            if attn is not None:
                h = self._attend(attn, h, context, mask)
            h = _run(resnet, self, h, temb)
        return h


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int, act: str = "silu"):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.act = _ACTIVATIONS[act]()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float,
                       max_period: int = 10000) -> torch.Tensor:
    """diffusers' ``get_timestep_embedding``: sinusoids of ``t`` [B] -> [B, dim], float32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    emb = t[:, None].float() * torch.exp(exponent / (half - shift))[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 else emb


@dataclass
class UNetOutput:
    sample: torch.Tensor


class UNet2DConditionModel(nn.Module):
    """diffusers' ``UNet2DConditionModel`` for the configurations :func:`unet_unsupported`
    accepts: ``UNet2DConditionModel(**config)`` builds the same parameters under the same names,
    and ``forward(sample, timestep, encoder_hidden_states, class_labels=...,
    encoder_attention_mask=...)`` computes the same ``.sample``."""

    def __init__(self, **config: Any):
        super().__init__()
        self.config = cfg = _checked_config("UNet2DConditionModel", "diffusers", UNET_DEFAULTS, unet_unsupported, config)
        channels = list(cfg.block_out_channels)
        n = len(channels)
        down_types, up_types = list(cfg.down_block_types), list(cfg.up_block_types)
        if not len(down_types) == len(up_types) == n:
            raise ValueError(f"UNet2DConditionModel: {len(down_types)} down blocks, {len(up_types)} up blocks and "
                             f"{n} block_out_channels; the three must be as many")

        def per_level(value):
            return list(value) if isinstance(value, (list, tuple)) else [value] * n

        heads = per_level(cfg.attention_head_dim)  # diffusers' misnomer: a transformer's number of heads
        cross, layers = per_level(cfg.cross_attention_dim), per_level(cfg.layers_per_block)
        tlayers = per_level(cfg.transformer_layers_per_block)

        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], cfg.conv_in_kernel,
                                 padding=(cfg.conv_in_kernel - 1) // 2)
        time_dim = cfg.time_embedding_dim or channels[0] * 4
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, cfg.act_fn)
        if cfg.class_embed_type == "simple_projection":
            self.class_embedding = nn.Linear(cfg.projection_class_embeddings_input_dim, time_dim)
        elif cfg.class_embed_type == "projection":
            self.class_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, time_dim)
        else:
            self.class_embedding = None
        temb = time_dim * 2 if cfg.class_embeddings_concat else time_dim

        def level(kind, i, nlayers, out, j):
            return _Level(kind, nlayers, temb, cfg.norm_eps, cfg.norm_num_groups, cfg.act_fn,
                          cfg.resnet_time_scale_shift, cfg.dropout, cross[j], heads[j],
                          heads[i] if heads[i] is not None else out, tlayers[j], bool(cfg.use_linear_projection))

        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i, kind in enumerate(down_types):
            cin, out = out, channels[i]
            self.down_blocks.append(DownBlock(level(kind, i, layers[i], out, i), cin, out, i < n - 1,
                                              cfg.downsample_padding))
        self.up_blocks = nn.ModuleList()  # registered before the middle block, built after it (diffusers' order)
        if cfg.mid_block_type is None:
            self.mid_block = None
        else:
            crossed = cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
            mid = level("CrossAttnMid" if crossed else "Mid", n - 1, 1, channels[-1], n - 1)
            self.mid_block = MidBlock(mid, channels[-1], cfg.mid_block_scale_factor, True if crossed else None)
        rev = channels[::-1]
        out = rev[0]
        for i, kind in enumerate(up_types):
            prev, out, cin = out, rev[i], rev[min(i + 1, n - 1)]
            j = n - 1 - i  # the reversed per-level settings; a plain attention's head size is read unreversed
            lv = level(kind, i, layers[j] + 1, out, j)
            self.up_blocks.append(UpBlock(lv, cin, out, prev, i < n - 1))
        self.num_upsamplers = n - 1
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, channels[0], eps=cfg.norm_eps)
        self.conv_act = _ACTIVATIONS[cfg.act_fn]()
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, cfg.conv_out_kernel,
                                  padding=(cfg.conv_out_kernel - 1) // 2)
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def enable_gradient_checkpointing(self) -> None:
        self.set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self.set_gradient_checkpointing(False)

    def set_gradient_checkpointing(self, on: bool) -> None:
        self.gradient_checkpointing = on
        for m in self.modules():
            if isinstance(m, _Block):
                m.gradient_checkpointing = on

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        cfg = self.config
        factor = 2 ** self.num_upsamplers
        forward_size = any(d % factor for d in sample.shape[-2:])
        mask = None
        if encoder_attention_mask is not None:
            mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = (t[None] if t.ndim == 0 else t).to(sample.device).expand(sample.shape[0])
        emb = timestep_embedding(t, self.config.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(emb.to(sample.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when the U-Net has a class embedding")
            class_emb = self.class_embedding(class_labels).to(sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if cfg.class_embeddings_concat else emb + class_emb
        context = encoder_hidden_states
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, states = block(h, emb, context, mask)
            skips.extend(states)
        if self.mid_block is not None:
            h = self.mid_block(h, emb, context, mask)
        size = None
        for i, block in enumerate(self.up_blocks):
            own = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            if i < len(self.up_blocks) - 1 and forward_size:
                size = tuple(skips[-1].shape[2:])
            h = block(h, own, emb, context, mask, size)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return UNetOutput(h) if return_dict else (h,)

    def to_diffusers(self):
        """diffusers' UNet2DConditionModel of this configuration, holding these weights."""
        from diffusers import UNet2DConditionModel as Reference

        net = Reference.from_config(dict(self.config))
        net.load_state_dict(self.state_dict())
        return net.to(self.dtype).train(self.training)


# -- autoencoder ----------------------------------------------------------------------------------

class DiagonalGaussian:
    """diffusers' ``DiagonalGaussianDistribution`` of moments [B, 2C, ...] (mean, log-variance)."""

    def __init__(self, moments: torch.Tensor):
        self.parameters = moments
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean + self.std * draw_normal(self.mean, generator)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


@dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    sample: torch.Tensor


class _Coder(nn.Module):
    """diffusers' ``Encoder`` (``encoder=True``) or ``Decoder`` of an AutoencoderKL."""

    def __init__(self, cfg: Config, cin: int, cout: int, encoder: bool):
        super().__init__()
        channels = list(cfg.block_out_channels)
        n, groups, act = len(channels), cfg.norm_num_groups, cfg.act_fn
        level = _Level("Attn", cfg.layers_per_block + (0 if encoder else 1), None, 1e-6, groups, act, "default",
                       0.0, None, 1, channels[-1], 1, False)
        self.conv_in = nn.Conv2d(cin, channels[0] if encoder else channels[-1], 3, stride=1, padding=1)
        if encoder:
            self.down_blocks = nn.ModuleList()
            out = channels[0]
            for i in range(n):
                prev, out = out, channels[i]
                block = _Level(**{**level.__dict__, "kind": "DownBlock2D"})
                self.down_blocks.append(DownBlock(block, prev, out, i < n - 1, padding=0))
        if not encoder:
            self.up_blocks = nn.ModuleList()
        self.mid_block = MidBlock(level, channels[-1], 1.0, bool(cfg.mid_block_add_attention))
        if not encoder:
            rev = channels[::-1]
            out = rev[0]
            for i in range(n):
                prev, out = out, rev[i]
                self.up_blocks.append(_DecoderUp(level, prev, out, i < n - 1))
        width = channels[-1] if encoder else channels[0]
        self.conv_norm_out = nn.GroupNorm(groups, width, eps=1e-6)
        self.conv_act = _ACTIVATIONS[act]()
        self.conv_out = nn.Conv2d(width, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in getattr(self, "down_blocks", []):
            h, _ = block(h, None, None, None)
        h = self.mid_block(h)
        if hasattr(self, "up_blocks"):
            h = h.to(self.up_blocks[0].resnets[0].conv1.weight.dtype)
            for block in self.up_blocks:
                h = block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class _DecoderUp(_Block):
    """``UpDecoderBlock2D``: resnets without skip connections, then a doubling."""

    def __init__(self, level: _Level, cin: int, cout: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(level.resnet(cin if i == 0 else cout, cout) for i in range(level.layers))
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            h = _run(resnet, self, h, None)
        return self.upsamplers[0](h) if self.upsamplers is not None else h


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL`` for the configurations :func:`vae_unsupported` accepts:
    ``encode(x).latent_dist`` and ``decode(z).sample`` as diffusers computes them."""

    def __init__(self, **config: Any):
        super().__init__()
        self.config = cfg = _checked_config("AutoencoderKL", "diffusers", VAE_DEFAULTS, vae_unsupported, config)
        latent = int(cfg.latent_channels)
        self.encoder = _Coder(cfg, cfg.in_channels, 2 * latent, encoder=True)
        self.decoder = _Coder(cfg, latent, cfg.out_channels, encoder=False)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if cfg.use_post_quant_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_out.weight.dtype

    def register_to_config(self, **values: Any) -> None:
        self.config.update(values)

    def enable_gradient_checkpointing(self) -> None:
        for m in self.modules():
            if isinstance(m, _Block):
                m.gradient_checkpointing = True

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        h = self.encoder(x)
        return EncoderOutput(DiagonalGaussian(self.quant_conv(h) if self.quant_conv is not None else h))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return DecoderOutput(self.decoder(z))

    def to_diffusers(self):
        """diffusers' AutoencoderKL of this configuration, holding these weights."""
        from diffusers import AutoencoderKL as Reference

        net = Reference.from_config(dict(self.config))
        net.load_state_dict(self.state_dict())
        return net.to(self.dtype).train(self.training)


# -- vocoder ----------------------------------------------------------------------------------------

HIFIGAN_DEFAULTS: dict[str, Any] = {
    "model_in_dim": 80, "sampling_rate": 16000, "upsample_initial_channel": 512, "upsample_rates": (4, 4, 4, 4),
    "upsample_kernel_sizes": (8, 8, 8, 8), "resblock_kernel_sizes": (3, 7, 11),
    "resblock_dilation_sizes": ((1, 3, 5), (1, 3, 5), (1, 3, 5)), "initializer_range": 0.01,
    "leaky_relu_slope": 0.1, "normalize_before": True, "model_type": "speecht5_hifigan",
}


class HifiGanResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=(kernel_size * d - d) // 2) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                    for _ in dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = conv2(F.leaky_relu(conv1(F.leaky_relu(x, self.slope)), self.slope)) + x
        return x


class SpeechT5HifiGan(nn.Module):
    """transformers' ``SpeechT5HifiGan`` (HiFi-GAN's generator, AudioLDM's vocoder): the same
    parameter names, the same waveform of a log-mel [B, T, n_mels] (or [T, n_mels]), and from the
    same seed the same initial weights."""

    def __init__(self, **config: Any):
        super().__init__()
        self.config = cfg = _config(HIFIGAN_DEFAULTS, config)
        width = int(cfg.upsample_initial_channel)
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(cfg.model_in_dim, width, kernel_size=7, stride=1, padding=3)
        self.upsampler = nn.ModuleList(
            nn.ConvTranspose1d(width // 2 ** i, width // 2 ** (i + 1), kernel_size=k, stride=r, padding=(k - r) // 2)
            for i, (r, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            HifiGanResidualBlock(width // 2 ** (i + 1), k, tuple(d), float(cfg.leaky_relu_slope))
            for i in range(len(self.upsampler))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(width // 2 ** len(self.upsampler), 1, kernel_size=7, stride=1, padding=3)
        self.register_buffer("mean", torch.zeros(cfg.model_in_dim))
        self.register_buffer("scale", torch.ones(cfg.model_in_dim))
        std = float(cfg.initializer_range or 0.02)  # transformers' initialisation, in its (post-)order
        self.apply(lambda m: _normal_init(m, std))

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        if self.config.normalize_before:
            spectrogram = (spectrogram - self.mean) / self.scale
        batched = spectrogram.dim() == 3
        x = (spectrogram if batched else spectrogram[None]).transpose(2, 1)
        x = self.conv_pre(x)
        slope = float(self.config.leaky_relu_slope)
        for i, up in enumerate(self.upsampler):
            x = up(F.leaky_relu(x, slope))
            res = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                res += self.resblocks[i * self.num_kernels + j](x)
            x = res / self.num_kernels
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))
        return x.squeeze(1) if batched else x.squeeze(0).transpose(1, 0).reshape(-1)

    def to_transformers(self):
        """transformers' SpeechT5HifiGan of this configuration, holding these weights."""
        from transformers import SpeechT5HifiGan as Reference, SpeechT5HifiGanConfig

        keep = {k: v for k, v in self.config.items() if k in HIFIGAN_DEFAULTS and k != "model_type"}
        net = Reference(SpeechT5HifiGanConfig(**keep))
        net.load_state_dict(self.state_dict())
        return net.to(self.conv_pre.weight.dtype).train(self.training)


def _normal_init(module: nn.Module, std: float) -> None:
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# -- CLAP's text tower ------------------------------------------------------------------------------

CLAP_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "projection_hidden_act": "relu", "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
    "initializer_factor": 1.0, "layer_norm_eps": 1e-12, "projection_dim": 512, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "model_type": "clap_text_model",
}
_TEXT_ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_new": lambda: nn.GELU(approximate="tanh"),
                     "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"), "relu": lambda: nn.ReLU(),
                     "silu": lambda: nn.SiLU(), "swish": lambda: nn.SiLU(), "tanh": lambda: nn.Tanh()}


def clap_text_unsupported(config: Mapping[str, Any]) -> str | None:
    """Why :class:`ClapTextModelWithProjection` cannot build a ClapTextConfig, or None."""
    cfg = _config(CLAP_TEXT_DEFAULTS, config)
    for key in ("hidden_act", "projection_hidden_act"):
        if cfg[key] not in _TEXT_ACTIVATIONS:
            return f"{key}={cfg[key]!r}"
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type={cfg['position_embedding_type']!r}"
    return None


class _Linear(nn.Module):
    """A dense layer, its dropout and the layer norm of it added to the input (RoBERTa's outputs)."""

    def __init__(self, cin: int, cout: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        width = int(cfg.hidden_size)
        self.heads, self.dropout_p = int(cfg.num_attention_heads), float(cfg.attention_probs_dropout_prob)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.dropout = nn.Dropout(self.dropout_p)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, -1)


class _Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _Linear(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = _TEXT_ACTIVATIONS[cfg.hidden_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Linear(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        width, positions, pad = int(cfg.hidden_size), int(cfg.max_position_embeddings), int(cfg.pad_token_id)
        self.padding_idx = pad
        self.word_embeddings = nn.Embedding(cfg.vocab_size, width, padding_idx=pad)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=True)
        self.register_buffer("token_type_ids", torch.zeros(1, positions, dtype=torch.long), persistent=True)
        self.position_embeddings = nn.Embedding(positions, width, padding_idx=pad)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids.ne(self.padding_idx).int()
        positions = (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.padding_idx  # RoBERTa's
        types = torch.gather(self.token_type_ids.expand(ids.shape[0], -1), 1, positions)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(int(cfg.num_hidden_layers)))


class _Pooler(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x[:, 0]))


class _TextModel(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.pooler = _Pooler(int(cfg.hidden_size))


class _Projection(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.linear1 = nn.Linear(cfg.hidden_size, cfg.projection_dim)
        self.activation = _TEXT_ACTIVATIONS[cfg.projection_hidden_act]()
        self.linear2 = nn.Linear(cfg.projection_dim, cfg.projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(x)))


@dataclass
class TextOutput:
    text_embeds: torch.Tensor
    last_hidden_state: torch.Tensor


class ClapTextModelWithProjection(nn.Module):
    """transformers' ``ClapTextModelWithProjection`` (CLAP's RoBERTa text tower and its
    projection, AudioLDM's conditioner): the same parameter names and the same ``text_embeds``
    of the same token ids and mask. A fresh network draws its weights from transformers'
    distributions (not the same numbers: these towers are loaded, not trained from scratch)."""

    def __init__(self, **config: Any):
        super().__init__()
        self.config = cfg = _checked_config("ClapTextModelWithProjection", "transformers", CLAP_TEXT_DEFAULTS, clap_text_unsupported, config)
        self.text_model = _TextModel(cfg)
        self.text_projection = _Projection(cfg)
        factor = float(cfg.initializer_factor)
        std = cfg.hidden_size ** -0.5 * (2 * cfg.num_hidden_layers) ** -0.5 * factor
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02 * factor)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextOutput:
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]
        x = self.text_model.embeddings(input_ids)
        for layer in self.text_model.encoder.layer:
            x = layer(x, mask)
        return TextOutput(self.text_projection(self.text_model.pooler(x)), x)

    def to_transformers(self):
        """transformers' ClapTextModelWithProjection of this configuration, holding these weights."""
        from transformers import ClapTextConfig, ClapTextModelWithProjection as Reference

        keep = {k: v for k, v in self.config.items() if k not in ("architectures", "transformers_version",
                                                                  "model_type", "dtype", "torch_dtype")}
        net = Reference(ClapTextConfig(**keep))
        net.load_state_dict(self.state_dict())
        return net.to(self.text_projection.linear1.weight.dtype).train(self.training)
