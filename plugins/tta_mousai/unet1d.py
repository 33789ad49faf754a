"""``unet1d``: audio-diffusion-pytorch's UNetV0 in one dimension, the denoiser of Mousai's
generator and of the bird-sound DiffGen.

x [B, C, N] -> [B, C, N]; ``t`` is the v-diffusion time s in [0, 1] (``v_diffusion``'s
``net_time``). Text enters by cross-attention to token embeddings [B, L, embedding_features]
(T5), padded with zeros to ``embedding_max_length`` as that repository's T5 embedder pads;
longer ones are cut. Per level: ``channels``, down-sampling ``factors``, repeated ``items``,
self-``attentions`` and ``cross_attentions`` (0 or 1), as in audio-diffusion-pytorch.

The unconditional input is learned, as audio-diffusion-pytorch's ``use_embedding_cfg``: a
fixed-length embedding that is part of this network (:meth:`null`). Caption dropout and
classifier-free guidance use it in place of the conditioner's ``null`` (see the Denoiser
contract). ``gradient_checkpointing: true`` recomputes each block's activations in the backward
pass instead of keeping them while training (less memory, more compute). The module is built by audio-diffusion-pytorch's own ``UNetV0`` with that plugin,
so its state dict has the reference's names.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from tta_core.plugin import Conditioning

from .rebuild import RebuildOnCopy


class UNet1D(RebuildOnCopy, torch.nn.Module):
    #: where adapters go by default (tta_core.adapters): the attention's query and key-value
    #: projections. Its output projection (``attention.blocks.0``) is called through a closure
    #: a-unet builds (tta_mousai.rebuild), so an adapter put there would never run.
    adapter_targets = ("*.to_q", "*.to_kv")

    def __init__(
        self,
        in_channels: int = 32,
        channels: Sequence[int] = (128, 256, 512, 512, 1024, 1024),
        factors: Sequence[int] = (1, 2, 2, 2, 2, 2),
        items: Sequence[int] = (2, 2, 2, 4, 8, 8),
        attentions: Sequence[int] = (0, 0, 1, 1, 1, 1),
        cross_attentions: Sequence[int] = (1, 1, 1, 1, 1, 1),
        attention_heads: int = 12,
        attention_features: int = 64,
        embedding_features: int = 768,
        embedding_max_length: int = 128,
        resnet_groups: int = 8,
        modulation_features: int = 1024,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        from audio_diffusion_pytorch import UNetV0

        self._args = dict(in_channels=in_channels, channels=tuple(channels), factors=tuple(factors), items=tuple(items),
                          attentions=tuple(attentions), cross_attentions=tuple(cross_attentions),
                          attention_heads=attention_heads, attention_features=attention_features,
                          embedding_features=embedding_features, embedding_max_length=embedding_max_length,
                          resnet_groups=resnet_groups, modulation_features=modulation_features,
                          gradient_checkpointing=gradient_checkpointing)

        levels = len(channels)
        for name, value in (("factors", factors), ("items", items), ("attentions", attentions),
                            ("cross_attentions", cross_attentions)):
            if len(value) != levels:
                raise ValueError(f"unet1d: {name} has {len(value)} entries, channels has {levels}: one per level")
        if any(c % resnet_groups for c in channels):
            raise ValueError(f"unet1d: every channel count must be a multiple of resnet_groups={resnet_groups}")
        if embedding_features < 1 or embedding_max_length < 1:
            raise ValueError("unet1d: embedding_features and embedding_max_length must be positive")
        self.embedding_features, self.max_length = embedding_features, embedding_max_length
        self.net = UNetV0(
            dim=1, in_channels=in_channels, channels=list(channels), factors=list(factors), items=list(items),
            attentions=list(attentions), cross_attentions=list(cross_attentions), attention_heads=attention_heads,
            attention_features=attention_features, embedding_features=embedding_features,
            embedding_max_length=embedding_max_length, use_embedding_cfg=True, resnet_groups=resnet_groups,
            modulation_features=modulation_features,
        )
        self.multiple = math.prod(factors)
        if gradient_checkpointing:
            _checkpoint_items(self.net)
        # the plugin's learned null, one vector per position: found by name, so that the
        # state dict holds it once, under the reference's name
        self._null_name = next(name for name, m in self.net.named_modules() if isinstance(m, torch.nn.Embedding)
                               and m.num_embeddings == embedding_max_length and m.embedding_dim == embedding_features)

    @property
    def _null_table(self) -> torch.nn.Embedding:
        return self.net.get_submodule(self._null_name)

    def null(self, batch: int) -> Conditioning:
        """The learned unconditional input: [batch, embedding_max_length, embedding_features]."""
        table = self._null_table.weight
        return Conditioning(tokens=table[None].expand(batch, -1, -1),
                            mask=torch.ones(batch, self.max_length, dtype=torch.bool, device=table.device))

    def _embedding(self, cond: Conditioning) -> torch.Tensor:
        tokens = cond.tokens
        if tokens is None or tokens.shape[-1] != self.embedding_features:
            got = None if tokens is None else tokens.shape[-1]
            raise ValueError(f"unet1d expects {self.embedding_features}-wide token conditioning, got {got}: "
                             "set embedding_features to the conditioner's width")
        if cond.mask is not None:
            tokens = tokens * cond.mask[..., None].to(tokens.dtype)
        tokens = tokens[:, : self.max_length]
        short = self.max_length - tokens.shape[1]
        return torch.nn.functional.pad(tokens, (0, 0, 0, short)) if short else tokens

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        n = x.shape[-1]
        pad = -n % self.multiple
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        return self.net(x, time=t.to(x.dtype), embedding=self._embedding(cond))[..., :n]


def _checkpoint_items(net: torch.nn.Module) -> None:
    """Recompute each item of every level (resnet, attention, cross-attention, modulation,
    resampling) in the backward pass instead of keeping its activations, while training.
    Each item's ``forward`` is wrapped in place, so the module tree and the state dict keep
    the reference's names; the nested levels are items of their parent too, and are left
    unwrapped, so nothing is recomputed twice."""
    from a_unet.apex import Block
    from torch.utils.checkpoint import checkpoint

    def wrap(item: torch.nn.Module) -> None:
        forward = item.forward

        def checkpointed(*args, **kwargs):
            if item.training and torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        item.forward = checkpointed

    for level in [m for m in net.modules() if isinstance(m, Block)]:
        for item in level.block.blocks:
            if not isinstance(item, Block):
                wrap(item)
