"""The training and validation sets of a stage, from the recipe's ``data:`` section."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..recipe import build


def items_for(ctx: Any, split: str = "train"):
    """The ItemSet of ``data.<split>``, read by its registered dataset reader."""
    data = ctx.recipe.get("data") or {}
    node = data.get(split)
    if node is None:
        raise UsageError(f"stage '{ctx.stage.name}' needs data.{split} in the recipe "
                         f"(e.g. {split}: {{type: jsonl, manifest: data/sounds/manifest.jsonl}})")
    items = build(node, "dataset", ctx.registry)
    if len(items) == 0:
        raise UsageError(f"data.{split} has no usable items; run `tta-run {ctx.recipe.path} prepare` for the report")
    return items


def training_dataset(ctx: Any, *, mel: bool = True, wave: bool = False, split: str = "train", train: bool = True):
    """AudioTextDataset over ``data.<split>``, reading mels from the run's cache when
    ``tta-run RECIPE prepare`` filled it (cached and fresh mels are identical). The cache holds
    whole clips under the recipe's audio settings; examples are cropped to the stage's length."""
    from ..data.cache import mel_cache
    from ..data.dataset import AudioTextDataset

    cache_root = ctx.run_dir / "cache"
    cache = mel_cache(cache_root, ctx.cache_audio) if mel and cache_root.exists() else None
    return AudioTextDataset(items_for(ctx, split), ctx.audio, train=train, seed=ctx.stage.seed, cache=cache,
                            mel=mel, wave=wave)
