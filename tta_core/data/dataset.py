"""Items -> training examples, and the DataLoader that batches them.

An example is a dict::

    mel      [1, T, F] float32 log-mel (T = audio.num_frames, F = audio.mel.n_mels)   if mel=True
    wave     [N] float32, N = audio.num_samples                                      if wave=True
    caption  str, one of the item's captions, drawn per epoch
    id, label (str or None), index (int)

and :func:`collate` stacks them into mel [B, 1, T, F], wave [B, N] and lists. Every random
choice (caption, crop start) comes from ``(seed, epoch, index)``, so an epoch is the same in
any number of workers and on resume; call :meth:`AudioTextDataset.set_epoch` before each epoch.

Training crops start at a random hop-aligned offset, evaluation crops at 0. With a mel cache
the mel is read from it (the file is decoded only when ``wave=True``); without one, the mel is
computed here, in the worker. A trainer that prefers one batched mel on its device asks for
``mel=False, wave=True`` and applies :class:`~tta_core.data.mel.LogMel` to ``batch["wave"]``.

A file that turns out bad while training (no ``prepare`` ran) gives None, which
:func:`collate` drops; with ``on_bad_item: fail`` it raises DataError. Each bad file is logged
on ``tta.data`` once per dataset, not once per epoch: the dataset remembers it in a flag array
that its DataLoader workers share, and later draws of it return None without decoding it
again. :attr:`AudioTextDataset.bad_count` is how many were met, for a run's summary.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .audio import BadAudio, fit, load_clip, mono, pick_offset
from .cache import FeatureCache, fingerprint
from .config import AudioConfig
from .items import Item
from .mel import clip_mel

log = logging.getLogger("tta.data")


class AudioTextDataset(torch.utils.data.Dataset):
    """A map-style dataset of captioned clips (see the module doc for the example dict)."""

    def __init__(self, items: Sequence[Item], audio: AudioConfig, *, train: bool, seed: int = 0,
                 cache: FeatureCache | None = None, mel: bool = True, wave: bool = False):
        if not (mel or wave):
            raise ValueError("AudioTextDataset needs mel=True, wave=True or both")
        self.items = list(items)
        self.audio, self.train, self.seed = audio, train, seed
        self.cache, self.mel, self.wave = cache, mel, wave
        self.epoch = 0
        # one byte per item in shared memory, so the workers (fork or spawn) mark bad files
        # for each other and for the main process
        self._bad = torch.zeros(len(self.items), dtype=torch.uint8).share_memory_()

    @property
    def bad_count(self) -> int:
        """How many distinct bad files this dataset has met so far (each logged once)."""
        return int(self._bad.sum())

    def set_epoch(self, epoch: int) -> None:
        """Captions and crops are drawn anew per epoch (workers re-read this each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict | None:
        item = self.items[index]
        if self._bad[index] and self.audio.on_bad_item != "fail":
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        caption = item.captions[int(rng.integers(len(item.captions)))]
        crop_rng = rng if self.train else None
        out = {"id": item.id, "caption": caption, "label": item.label, "index": index}
        T = self.audio.num_frames
        cached = info = None
        if self.mel and self.cache is not None:
            try:
                key = fingerprint(item.audio)
            except OSError:
                key = None
            cached = self.cache.get(key) if key else None
            info = self.cache.info(key) if cached is not None else None
        if cached is not None and not self.wave:
            offset = pick_offset(info["samples"], self.audio, crop_rng)
            out["mel"] = torch.from_numpy(np.array(cached[offset:offset + T]))[None]
            return out
        try:
            clip = load_clip(item.audio, self.audio)
        except BadAudio as exc:
            if self.audio.on_bad_item == "fail":
                raise DataError(f"bad item {item.id!r}: {exc} (audio.on_bad_item is 'fail')") from None
            if not self._bad[index]:  # two workers meeting it at once may both log it; no more
                self._bad[index] = 1
                log.warning("skipped %s: %s%s (bad files so far: %d; each is logged once)", item.audio, exc.reason,
                            f" ({exc.detail})" if exc.detail else "", self.bad_count)
            return None
        offset = pick_offset(clip.wave.shape[-1], self.audio, crop_rng)
        if self.wave:
            out["wave"] = fit(clip.wave, self.audio, offset)
        if self.mel:
            full = torch.from_numpy(cached) if cached is not None else clip_mel(mono(clip.wave, self.audio.channels), self.audio)
            out["mel"] = full[offset:offset + T].clone()[None]
        return out


def collate(examples: list[dict | None]) -> dict | None:
    """Stack examples, dropping the None of bad files; None when the whole batch was bad.
    Tensor fields are stacked, Conditioning fields concatenated (token lengths padded and
    masked), ``index`` becomes a tensor, the rest (captions, ids, labels) stay lists."""
    from ..interfaces import Conditioning

    examples = [e for e in examples if e is not None]
    if not examples:
        return None
    batch = {key: [e[key] for e in examples] for key in examples[0]}
    for key, values in batch.items():
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], Conditioning):
            batch[key] = Conditioning.cat(values)
    batch["index"] = torch.tensor(batch["index"])
    return batch


def make_loader(dataset: AudioTextDataset, batch_size: int, *, shuffle: bool | None = None, workers: int = 0,
                seed: int = 0, drop_last: bool = False, timeout: float = 300.0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` with :func:`collate`. Shuffles when the dataset is a
    training one (unless told), in an order fixed by ``seed``. ``timeout`` (seconds, workers
    only) turns a worker stuck on a file into an error instead of a hung run."""
    shuffle = dataset.train if shuffle is None else shuffle
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
        generator=torch.Generator().manual_seed(seed), drop_last=drop_last,
        timeout=timeout if workers > 0 else 0, pin_memory=torch.cuda.is_available(),
        # fresh workers each epoch, so they see set_epoch()
        persistent_workers=False,
    )
