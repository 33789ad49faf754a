"""Training on WebDataset tar shards that are read as a stream, never all on disk: the
``webdataset`` dataset reader (plugins/tta_datasets) gives a :class:`ShardSource`, and a
training stage reads it through :class:`ShardStream`.

The stream is a pure function of (seed, position), as the map-style one is
(tta_core.training.data), so a resumed run goes on exactly where it stopped and several
processes see together what one sees:

- The shards are dealt to ``lanes`` lanes anew each epoch: epoch ``e`` permutes the shard
  list with a generator seeded by (seed, e), and lane ``j`` reads the permuted shards ``j,
  j + lanes, ...`` in order, then goes on to its shards of epoch ``e + 1``: each lane is an
  endless stream of samples.
- Each lane passes its samples through a shuffle buffer of ``shuffle`` samples: once full, a
  sample drawn at random (a generator seeded by (seed, lane)) leaves and the next one read
  takes its place.
- Micro-batch ``m`` of the global batch ``B`` takes samples ``[m * b, (m + 1) * b)`` of every
  lane, ``b = B / lanes``, lane after lane. Under torchrun process ``r`` of ``W`` reads only
  the lanes ``r, r + W, ...`` (so ``lanes`` is a multiple of ``W``): the global batch holds
  the same samples in any number of processes, and each process reads only its shards.
- Resuming at micro-batch ``m`` reads each lane's first ``m * b`` samples again without
  decoding their audio: the position is the step counter the checkpoint already holds, and
  replaying it rebuilds the shuffle buffer exactly (the documented equivalent of storing the
  buffer: nothing more is saved, at the cost of reading those bytes again).

A sample is the members of one key: its audio (the first of ``flac``, ``wav``, ``mp3``,
``ogg``, ``opus`` it has) and a JSON caption (``text``, ``caption`` or ``captions``: a
string or a list). A sample without audio or caption is counted (``no_audio``,
``no_caption``) and left out; a shard that cannot be opened or read to its end is counted
(``unreadable_shard``) and the lane goes on with its next shard; audio that does not decode
is met when the example is made, counted and dropped from its batch, as in the map-style
path. URLs are anything ``webdataset.gopen`` opens: local paths, ``pipe:COMMAND``, http(s)
(through curl), s3 (through its CLI).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger("tta.data")

AUDIO_MEMBERS = ("flac", "wav", "mp3", "ogg", "opus")
CAPTION_FIELDS = ("text", "caption", "captions")


@dataclass
class ShardSource:
    """What the ``webdataset`` reader gives: the shard URLs and how to read them."""

    urls: list[str]
    shuffle: int = 1000
    lanes: int | None = None  # None: chosen from the shards and the batch (see lanes_for)
    source: str = ""
    skipped: Counter = field(default_factory=Counter)  # filled as the stream is read

    def __len__(self) -> int:  # a stream has no length; a set of shards has
        return len(self.urls)

    def lanes_for(self, global_batch: int, world: int = 1) -> int:
        """``lanes`` when given, else the largest divisor of the batch that is at most the
        number of shards; checked against the batch and the processes."""
        lanes = self.lanes
        if lanes is None:
            lanes = max(d for d in range(1, min(global_batch, len(self.urls)) + 1) if global_batch % d == 0)
        from ..errors import UsageError

        if lanes > len(self.urls):
            raise UsageError(f"{self.source}: lanes {lanes} is more than its {len(self.urls)} shard(s); every lane "
                             "reads shards of its own")
        if global_batch % lanes:
            raise UsageError(f"{self.source}: the batch of {global_batch} does not split into {lanes} lanes; "
                             "set lanes: to a divisor of batch_size")
        if lanes % world:
            raise UsageError(f"{self.source}: {lanes} lane(s) do not split over {world} processes; set lanes: to a "
                             f"multiple of {world} that divides batch_size (and is at most the number of shards)")
        return lanes


def _caption(record: Any) -> tuple[str, ...]:
    if not isinstance(record, dict):
        return ()
    for name in CAPTION_FIELDS:
        value = record.get(name)
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        texts = tuple(t.strip() for t in texts if isinstance(t, str) and t.strip())
        if texts:
            return texts
    return ()


@dataclass
class Sample:
    """One key of a shard: where it came from, its audio bytes (not decoded yet), captions,
    and the rest of its JSON."""

    key: str
    url: str
    audio: bytes
    captions: tuple[str, ...]
    label: str | None = None
    meta: dict = field(default_factory=dict)


class ShardStream:
    """The stream of samples of a :class:`ShardSource` (see the module doc)."""

    def __init__(self, source: ShardSource, *, seed: int, global_batch: int, world: int = 1):
        self.source, self.seed, self.batch = source, seed, global_batch
        self.lanes = source.lanes_for(global_batch, world)
        self.per_lane = global_batch // self.lanes

    # -- one lane ---------------------------------------------------------------------------
    def lane_shards(self, lane: int, epoch: int) -> list[str]:
        rng = np.random.default_rng([self.seed, 7919, epoch])
        order = rng.permutation(len(self.source.urls))
        return [self.source.urls[i] for i in order[lane::self.lanes]]

    def _read(self, url: str) -> Iterator[Sample]:
        """The samples of one shard, in order; a shard that breaks off is counted."""
        import webdataset

        current: dict[str, Any] = {}
        key = None

        def done(members: dict, key: str) -> Sample | None:
            audio_name = next((n for n in AUDIO_MEMBERS if n in members), None)
            if audio_name is None:
                self._skip("no_audio", f"{url}:{key}")
                return None
            try:
                record = json.loads(members.get("json", b"{}").decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            captions = _caption(record)
            if not captions:
                self._skip("no_caption", f"{url}:{key}")
                return None
            label = record.get("label")
            return Sample(key, url, members[audio_name], captions,
                          None if label is None else str(label), {k: v for k, v in record.items()
                                                                  if k not in (*CAPTION_FIELDS, "label")})

        try:
            stream = webdataset.gopen(url, "rb")
        except Exception as exc:
            self._skip("unreadable_shard", url, str(exc))
            return
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name.rsplit("/", 1)[-1]
                    base, _, ext = name.partition(".")
                    if key is not None and base != key:
                        sample = done(current, key)
                        if sample is not None:
                            yield sample
                        current = {}
                    key = base
                    if ext == "json" or ext in AUDIO_MEMBERS:
                        current[ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._skip("unreadable_shard", url, f"{type(exc).__name__}: {exc}")
            return
        finally:
            stream.close()
        if key is not None:
            sample = done(current, key)
            if sample is not None:
                yield sample

    def _skip(self, reason: str, where: str, detail: str = "") -> None:
        self.source.skipped[reason] += 1
        log.warning("%s: skipped %s: %s%s", self.source.source or "webdataset", where, reason,
                    f" ({detail})" if detail else "")

    def lane(self, lane: int, start: int = 0) -> Iterator[tuple[int, Sample]]:
        """(position, sample) of lane ``lane`` from position ``start`` on: the samples before it
        are read again (the shuffle buffer with them), their audio not decoded."""
        rng = np.random.default_rng([self.seed, 104729, lane])
        buffer: list[Sample] = []
        position, epoch = 0, 0
        size = max(1, int(self.source.shuffle))
        while True:
            read_any = False
            for url in self.lane_shards(lane, epoch):
                for sample in self._read(url):
                    read_any = True
                    buffer.append(sample)
                    if len(buffer) < size:
                        continue
                    pick = int(rng.integers(len(buffer)))
                    out = buffer[pick]
                    buffer[pick] = buffer[-1]
                    buffer.pop()
                    if position >= start:
                        yield position, out
                    position += 1
            if not read_any:
                from ..errors import DataError

                raise DataError(f"{self.source.source or 'webdataset'}: lane {lane} read no usable sample in epoch "
                                f"{epoch} (shards {', '.join(self.lane_shards(lane, epoch))})")
            epoch += 1

    # -- batches ----------------------------------------------------------------------------
    def my_lanes(self, rank: int = 0, world: int = 1) -> list[int]:
        return list(range(rank, self.lanes, world))

    def batches(self, rank: int = 0, world: int = 1, start: int = 0) -> Iterator[list[tuple[int, int, Sample]]]:
        """This process's part of each micro-batch from micro-batch ``start`` on: (lane,
        position, sample) for b samples of each of its lanes, lane after lane."""
        streams = {j: self.lane(j, start * self.per_lane) for j in self.my_lanes(rank, world)}
        while True:
            out = []
            for j, stream in streams.items():
                for _ in range(self.per_lane):
                    position, sample = next(stream)
                    out.append((j, position, sample))
            yield out


def expand(shards: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern (``train-{000000..000099}.tar``), a list of them, or a
    folder holding ``*.tar``."""
    import os

    import braceexpand

    items = [shards] if isinstance(shards, str) else list(shards)
    urls: list[str] = []
    for item in items:
        if not item.startswith("pipe:") and "://" not in item and os.path.isdir(item):
            urls += sorted(os.path.join(item, n) for n in os.listdir(item) if n.endswith(".tar"))
        else:
            urls += list(braceexpand.braceexpand(item))
    return urls


def positions_seed(seed: int, lane: int, position: int) -> np.random.Generator:
    """The generator of one example's random choices (caption, crop)."""
    return np.random.default_rng([seed, lane, position])




class StreamExamples:
    """Training examples from a :class:`ShardSource`, as :class:`tta_core.data.dataset.AudioTextDataset`
    makes them from files (the same dict; ``index`` is the sample's position in its lane):
    the caption and the crop are drawn from (seed, lane, position)."""

    streaming = True

    def __init__(self, source: ShardSource, audio: Any, *, seed: int, global_batch: int, world: int = 1,
                 mel: bool = True, wave: bool = False):
        self.source, self.audio, self.seed = source, audio, seed
        self.mel, self.wave = mel, wave
        self.stream = ShardStream(source, seed=seed, global_batch=global_batch, world=world)
        self.bad_count = 0

    def __len__(self) -> int:  # for reports: one "epoch" is not defined on a stream
        return len(self.source.urls)

    def example(self, lane: int, position: int, sample: Sample) -> dict | None:
        from ..errors import DataError
        from .audio import BadAudio, decode_clip, fit, mono, pick_offset
        from .mel import clip_mel

        rng = np.random.default_rng([self.seed, lane, position])
        caption = sample.captions[int(rng.integers(len(sample.captions)))]
        where = f"{sample.url}:{sample.key}"
        try:
            clip = decode_clip(sample.audio, self.audio, where)
        except BadAudio as exc:
            if self.audio.on_bad_item == "fail":
                raise DataError(f"bad sample {where}: {exc} (audio.on_bad_item is 'fail')") from None
            self.bad_count += 1
            self.source.skipped[exc.reason] += 1
            log.warning("skipped %s: %s%s", where, exc.reason, f" ({exc.detail})" if exc.detail else "")
            return None
        out = {"id": sample.key, "caption": caption, "label": sample.label, "index": position}
        offset = pick_offset(clip.wave.shape[-1], self.audio, rng)
        if self.wave:
            out["wave"] = fit(clip.wave, self.audio, offset)
        if self.mel:
            full = clip_mel(mono(clip.wave, self.audio.channels), self.audio)
            out["mel"] = full[offset:offset + self.audio.num_frames].clone()[None]
        return out

    def batches(self, rank: int, world: int, start: int, collate: Any, workers: int = 0) -> Iterator[Any]:
        """This process's collated micro-batches from micro-batch ``start`` on. With ``workers``
        DataLoader workers, worker ``w`` makes the micro-batches ``start + w``, ``start + w +
        workers``, ... (each reads this process's lanes, and decodes only its own batches), and
        the DataLoader hands them out in turn: the same batches, in the same order."""
        if workers <= 0:
            for part in self.stream.batches(rank, world, start):
                yield collate([self.example(lane, position, sample) for lane, position, sample in part])
            return
        loader = torch.utils.data.DataLoader(_Batches(self, rank, world, start, collate), batch_size=None,
                                             num_workers=workers, collate_fn=_identity, persistent_workers=False)
        yield from loader


def _identity(x: Any) -> Any:
    return x


class _Batches(torch.utils.data.IterableDataset):
    """The micro-batches of one DataLoader worker (see :meth:`StreamExamples.batches`)."""

    def __init__(self, examples: StreamExamples, rank: int, world: int, start: int, collate: Any):
        self.examples, self.rank, self.world, self.start, self.collate = examples, rank, world, start, collate

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        me, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for m, part in enumerate(self.examples.stream.batches(self.rank, self.world, self.start)):
            if m % count == me:
                yield self.collate([self.examples.example(*entry) for entry in part])
