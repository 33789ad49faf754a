"""The training and validation sets of a stage, from the recipe's ``data:`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError


def items_for(ctx: Any, split: str = "train"):
    """The ItemSet of ``data.<split>``, read by its registered dataset reader. Read once per
    stage (the training set and the validation prompts share it), so the reader reports a
    bad row once."""
    memo = ctx.__dict__.setdefault("_items_by_split", {})
    if split in memo:
        return memo[split]
    data = ctx.recipe.get("data") or {}
    node = data.get(split)
    if node is None:
        raise UsageError(f"stage '{ctx.stage.name}' needs data.{split} in the recipe "
                         f"(e.g. {split}: {{type: jsonl, manifest: data/sounds/manifest.jsonl}})")
    from ..data.prepare import read_split

    items = read_split(split, node, ctx.registry, streams=True)
    if len(items) == 0:
        raise UsageError(f"data.{split} has no usable items; run `tta-run {ctx.recipe.path} prepare` for the report")
    memo[split] = items
    return items


def prepared_mel_cache(ctx: Any):
    """The mel cache ``tta-run RECIPE prepare`` filled for this run (None when it never ran),
    checked: a damaged shard stops the stage (DamagedCache, exit 1) with the file named and
    the command that rebuilds it, before any worker reads it."""
    from ..data.cache import mel_cache

    cache_root = ctx.run_dir / "cache"
    if not cache_root.exists():
        return None
    cache = mel_cache(cache_root, ctx.cache_audio or ctx.audio)
    recipe = getattr(ctx.recipe, "path", None)
    run_dir = None if Path(ctx.run_dir).resolve() == Path(ctx.recipe.run_dir).resolve() else ctx.run_dir
    cache.require_intact(recipe, run_dir)
    return cache


def training_dataset(ctx: Any, *, mel: bool = True, wave: bool = False, split: str = "train", train: bool = True):
    """AudioTextDataset over ``data.<split>``, reading mels from the run's cache when
    ``tta-run RECIPE prepare`` filled it (cached and fresh mels are identical). The cache holds
    whole clips under the recipe's audio settings; examples are cropped to the stage's length."""
    from ..data.dataset import AudioTextDataset
    from ..data.stream import ShardSource, StreamExamples

    items = items_for(ctx, split)
    if isinstance(items, ShardSource):  # shards read as a stream (the webdataset reader)
        if not train:
            raise UsageError(f"data.{split} is a stream of shards, read as training goes: validation reads its "
                             f"clips up front and needs files (leave validate_every unset for stage "
                             f"'{ctx.stage.name}')")
        return StreamExamples(items, ctx.audio, seed=ctx.stage.seed, global_batch=ctx.stage.batch_size,
                              world=int(getattr(ctx, "world_size", 1) or 1), mel=mel, wave=wave)
    cache = prepared_mel_cache(ctx) if mel else None
    return AudioTextDataset(items, ctx.audio, train=train, seed=ctx.stage.seed, cache=cache,
                            mel=mel, wave=wave)
