"""Latent and text-embedding caches for stages that train on a frozen autoencoder and a
frozen conditioner, so that a step costs only the denoiser's forward and backward.

The caches live in the run's ``cache/`` folder beside the mel cache (``data/cache.py`` has the
layout) and are filled once, at the start of the stage (under torchrun each process encodes its share of
the shards and rank 0 writes the index):

- **latents**: the whole clip is encoded once; a training example is a crop of that latent
  starting on a latent frame (every ``r`` mel frames, or every ``r`` samples for a waveform
  autoencoder), a subset of the hop-aligned crops the uncached path draws. For an autoencoder
  with a Gaussian posterior (``encode_moments``) the cache keeps its mean and standard
  deviation, so each step still draws a fresh posterior sample. The cache is named by a
  digest of the audio settings, the autoencoder's recipe node and its weights: retraining the
  autoencoder starts a new one.
- **text**: each distinct caption's embedding (tokens trimmed to their length, pooled), named
  by a digest of the conditioner's recipe node and weights.

Cached and uncached training see the same examples up to the crop grid and float rounding
(the encoder runs in fp32 here, under the stage's autocast otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..data.audio import BadAudio, load_clip, max_offset_frames, mono, pad_to
from ..data.cache import BlockWriter, FeatureCache, digest, fingerprint, latent_cache, text_cache, text_key
from ..data.items import Item
from ..data.mel import clip_mel
from ..interfaces import Conditioning
from ..progress import Progress

log = logging.getLogger("tta.train")


def weights_digest(module: Any) -> str:
    """A digest of a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    state = module.state_dict() if isinstance(module, torch.nn.Module) else {}
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


#: Recipe settings of a component that change how it trains, never what it computes: a cache
#: made without them is still valid with them.
OUTPUT_NEUTRAL = frozenset({"gradient_checkpointing"})


def component_digest(node: Any, module: Any) -> str:
    """What names a component's cached outputs: its recipe node (less the settings that do not
    change its outputs, :data:`OUTPUT_NEUTRAL`) and its weights."""
    if isinstance(node, dict):
        node = {k: v for k, v in node.items() if k not in OUTPUT_NEUTRAL}
    return digest({"node": node, "weights": weights_digest(module)})


# -- latents ---------------------------------------------------------------------------------


def latent_stride(autoencoder: Any, audio: Any) -> int | None:
    """Mel frames (mel autoencoders) or samples (waveform ones) per latent frame, when the
    training window is a whole number of latent frames; None otherwise (no latent cache)."""
    n = audio.num_frames if getattr(autoencoder, "domain", "mel") == "mel" else audio.num_samples
    frames = autoencoder.latent_shape(n)[1]
    return n // frames if frames > 0 and n % frames == 0 else None


def _autoencoder_input(item: Item, audio: Any, domain: str, mels: FeatureCache | None, key: str) -> torch.Tensor:
    """The whole clip in the autoencoder's domain: log-mel [1, T, F] or wave [C, N]."""
    if domain == "mel" and mels is not None:
        cached = mels.get(key)
        if cached is not None:
            return torch.from_numpy(np.array(cached))[None]
    wave = load_clip(item.audio, audio).wave
    if domain == "mel":
        return clip_mel(mono(wave, audio.channels), audio)[None]
    wave = pad_to(wave, audio.num_samples)
    return wave if wave.ndim == 2 else wave[None]


@torch.no_grad()
def fill_latent_cache(cache: FeatureCache, autoencoder: Any, items: Sequence[Item], audio: Any, *,
                      device: Any, mels: FeatureCache | None = None, batch_size: int = 16,
                      progress: bool = True, part: Any = None) -> dict[str, int]:
    """Encode every item not yet in ``cache``; returns counts (encoded, reused, bad).
    ``progress``: report the encoding (a bar on a terminal, periodic lines elsewhere).

    The items to encode go in blocks of half the cache's shard size (a latent and its
    standard deviation each), one shard per block, batched by shape within a block.
    ``part`` (:class:`tta_core.distributed.Part`): this process encodes every world-th block;
    rank 0 indexes every shard: the cache one process fills."""
    domain = getattr(autoencoder, "domain", "mel")
    moments = hasattr(autoencoder, "encode_moments")
    counts = {"encoded": 0, "reused": 0, "bad": 0}

    def run(group: list[tuple[str, torch.Tensor, int]]) -> None:
        x = torch.stack([g[1] for g in group]).to(device)
        if moments:
            mean, std = autoencoder.encode_moments(x)
        else:
            mean, std = autoencoder.encode(x), None
        for i, (key, _, samples) in enumerate(group):
            if std is not None:  # before the mean: a present mean implies a present std
                cache.stage(key + ".std", std[i].float().cpu().numpy())
            cache.stage(key, mean[i].float().cpu().numpy(), samples=samples)
        counts["encoded"] += len(group)

    keyed = []
    for item in items:
        try:
            key = fingerprint(item.audio)
        except OSError:
            counts["bad"] += 1 if part is None or part.main else 0
            continue
        if key in cache:
            counts["reused"] += 1 if part is None or part.main else 0
        else:
            keyed.append((item, key))
    writer = BlockWriter(cache, keyed, max(1, cache.shard_size // 2), part)
    with Progress(sum(len(writer.blocks[k]) for k in writer.mine), "latent cache", "clips",
                  disable=not progress or not keyed) as bar:
        for k in writer.mine:
            todo: dict[tuple, list[tuple[str, torch.Tensor, int]]] = {}
            for item, key in writer.blocks[k]:
                bar.update()
                try:
                    x = _autoencoder_input(item, audio, domain, mels, key)
                except BadAudio as exc:
                    log.warning("latent cache: skipped %s: %s", item.audio, exc.reason)
                    counts["bad"] += 1
                    continue
                samples = x.shape[-1] if domain != "mel" else x.shape[-2] * audio.mel.hop
                group = todo.setdefault(tuple(x.shape), [])
                group.append((key, x, samples))
                if len(group) >= batch_size:
                    run(todo.pop(tuple(x.shape)))
            for group in todo.values():
                run(group)
            writer.done(k)
    every = writer.finish(counts)
    return {key: sum(c[key] for c in every) for key in counts}


# -- text ------------------------------------------------------------------------------------


def _store_text(cache: FeatureCache, key: str, cond: Conditioning, i: int) -> None:
    if cond.pooled is not None and cond.tokens is not None:
        cache.stage(key + ".pooled", cond.pooled[i].float().cpu().numpy())
    if cond.tokens is None:
        cache.stage(key, cond.pooled[i].float().cpu().numpy(), parts="pooled")
        return
    tokens = cond.tokens[i]
    if cond.mask is None:
        cache.stage(key, tokens.float().cpu().numpy(), parts="tokens")
        return
    mask = cond.mask[i].bool()
    n = int(mask.sum())
    if bool(mask[:n].all()):  # padding at the end: keep the real tokens only
        cache.stage(key, tokens[:n].float().cpu().numpy(), parts="tokens")
    else:
        cache.stage(key + ".mask", mask.cpu().numpy().astype(np.uint8))
        cache.stage(key, tokens.float().cpu().numpy(), parts="tokens", masked=True)


@torch.no_grad()
def fill_text_cache(cache: FeatureCache, conditioner: Any, captions: Iterable[str], *,
                    batch_size: int = 64, progress: bool = True, part: Any = None) -> dict[str, int]:
    """Encode every caption not yet in ``cache``; returns counts (encoded, reused). Captions
    go in blocks of ``batch_size`` (at most a third of the shard size: a caption stores up to
    three arrays), one encoding and one shard each; ``part``: as
    :func:`fill_latent_cache`."""
    todo, reused, seen = [], 0, set()
    for text in captions:
        key = text_key(text)
        if key in seen:
            continue
        seen.add(key)
        if key in cache:
            reused += 1
        else:
            todo.append(text)
    writer = BlockWriter(cache, todo, batch_size, part)
    encoded = 0
    with Progress(sum(len(writer.blocks[k]) for k in writer.mine), "text cache", "captions",
                  disable=not progress or not todo) as bar:
        for k in writer.mine:
            chunk = writer.blocks[k]
            cond = conditioner.encode_text(chunk)
            for i, text in enumerate(chunk):
                _store_text(cache, text_key(text), cond, i)
            encoded += len(chunk)
            writer.done(k)
            bar.update(len(chunk))
    every = writer.finish({"encoded": encoded, "reused": reused if part is None or part.main else 0})
    return {key: sum(c[key] for c in every) for key in ("encoded", "reused")}


def cached_conditioning(cache: FeatureCache, text: str) -> Conditioning:
    """One caption's Conditioning (batch of 1) from the text cache."""
    key = text_key(text)
    main = cache.get(key)
    if main is None:
        raise KeyError(f"caption not in the text cache: {text!r}")
    info = cache.info(key) or {}
    if info.get("parts") == "pooled":
        return Conditioning(pooled=torch.from_numpy(np.array(main))[None])
    tokens = torch.from_numpy(np.array(main))[None]
    pooled = cache.get(key + ".pooled")
    pooled = None if pooled is None else torch.from_numpy(np.array(pooled))[None]
    if info.get("masked"):
        mask = torch.from_numpy(np.array(cache.get(key + ".mask"))).bool()[None]
    else:
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    return Conditioning(tokens=tokens, mask=mask, pooled=pooled)


# -- the dataset -----------------------------------------------------------------------------


class CachedLatentDataset(torch.utils.data.Dataset):
    """Examples of cached latents and (optionally) cached caption embeddings.

    An example: ``latent`` [C, L, ...] (the posterior mean, or the latent), ``latent_std``
    (same shape, when the autoencoder has a posterior), ``cond`` (a batch-1 Conditioning,
    when the text cache is given), ``caption``, ``id``, ``label``, ``index``. Captions and crops
    are drawn from ``(seed, epoch, index)`` as in :class:`~tta_core.data.dataset.AudioTextDataset`.
    Items missing from the latent cache (bad files) give None, which :func:`~tta_core.data.dataset.collate` drops.
    """

    def __init__(self, items: Sequence[Item], audio: Any, latents: FeatureCache, *, stride: int, domain: str,
                 window: int, texts: FeatureCache | None = None, train: bool = True, seed: int = 0):
        self.items, self.audio, self.latents, self.texts = list(items), audio, latents, texts
        self.stride, self.domain, self.window = stride, domain, window
        self.train, self.seed, self.epoch = train, seed, 0
        self._keys: dict[int, str | None] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _key(self, index: int) -> str | None:
        if index not in self._keys:
            try:
                self._keys[index] = fingerprint(self.items[index].audio)
            except OSError:
                self._keys[index] = None
        return self._keys[index]

    def __getitem__(self, index: int) -> dict | None:
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        caption = item.captions[int(rng.integers(len(item.captions)))]
        key = self._key(index)
        full = self.latents.get(key) if key else None
        if full is None:
            return None
        samples = (self.latents.info(key) or {}).get("samples", 0)
        if self.domain == "mel":  # crop starts are hop-aligned and on the latent grid
            top = max_offset_frames(samples, self.audio) // self.stride
        else:
            top = max(0, samples - self.audio.num_samples) // self.stride
        top = min(top, full.shape[1] - self.window)
        offset = int(rng.integers(0, top + 1)) if self.train and top > 0 else 0
        out = {"id": item.id, "caption": caption, "label": item.label, "index": index,
               "latent": torch.from_numpy(np.array(full[:, offset:offset + self.window]))}
        std = self.latents.get(key + ".std")
        if std is not None:
            out["latent_std"] = torch.from_numpy(np.array(std[:, offset:offset + self.window]))
        if self.texts is not None:
            out["cond"] = cached_conditioning(self.texts, caption)
        return out


def _repaired(cache: FeatureCache) -> FeatureCache:
    """``cache`` without its damaged shards (logged by name), so their entries are encoded again."""
    for d in cache.drop_damaged():
        log.warning("%s cache: %s; encoding its %d entries again", cache.feature, d, len(d.keys))
    return cache


def build_caches(ctx: Any, autoencoder: Any, conditioner: Any | None, items: Sequence[Item],
                 shard_size: int = 256) -> dict:
    """Fill (every process its share of the shards, rank 0 the index) and open the latent cache and, when
    ``conditioner`` is given, the text cache. Returns {"latents", "texts", "stride"}; latents
    is None when the autoencoder's latent grid does not tile the training window. Damaged
    shards of these caches are rebuilt; a damaged mel cache stops the stage (it is
    ``prepare``'s to rebuild)."""
    from .datasets import prepared_mel_cache

    stride = latent_stride(autoencoder, ctx.audio)
    root = ctx.run_dir / "cache"
    recipe_nodes = ctx.recipe.components
    latents = texts = None
    if stride is None:
        log.info("latent cache off: the training window is not a whole number of latent frames")
    else:
        name = ctx.roles["autoencoder"]
        latents = latent_cache(root, ctx.audio, component_digest(recipe_nodes[name], autoencoder), shard_size)
    if conditioner is not None:
        name = ctx.roles["conditioner"]
        texts = text_cache(root, component_digest(recipe_nodes[name], conditioner), shard_size)
    from ..distributed import Part

    world = int(getattr(ctx, "world_size", 1) or 1)
    part = Part(ctx.rank, world) if world > 1 else None  # each process fills its share of the shards
    if ctx.rank == 0:
        for cache in (latents, texts):
            if cache is not None:
                _repaired(cache)
    if part is not None:
        ctx.barrier()
        for cache in (latents, texts):
            if cache is not None:
                cache.reload()  # without what rank 0 dropped
    show = ctx.progress and ctx.rank == 0
    mels = prepared_mel_cache(ctx) if getattr(autoencoder, "domain", "mel") == "mel" else None
    if latents is not None:
        t0 = time.perf_counter()
        counts = fill_latent_cache(latents, autoencoder, items, ctx.audio, device=ctx.device, mels=mels,
                                   progress=show, part=part)
        if ctx.rank == 0:
            log.info("latent cache %s: %d encoded, %d reused, %d bad (%.1f s)", latents.dir.name, counts["encoded"],
                     counts["reused"], counts["bad"], time.perf_counter() - t0)
    if texts is not None:
        t0 = time.perf_counter()
        counts = fill_text_cache(texts, conditioner, (c for item in items for c in item.captions), progress=show,
                                 part=part, batch_size=min(64, max(1, shard_size // 3)))
        if ctx.rank == 0:
            log.info("text cache %s: %d encoded, %d reused (%.1f s)", texts.dir.name, counts["encoded"],
                     counts["reused"], time.perf_counter() - t0)
    ctx.barrier()
    for cache in (latents, texts):
        if cache is not None:
            cache.reload()  # what the other processes wrote
    return {"latents": latents, "texts": texts, "stride": stride}
