"""``tta-run RECIPE shard``: a recipe's datasets as WebDataset tar shards.

Each usable clip (judged by ``prepare``'s rules: :func:`tta_core.data.prepare.check_split`)
becomes, under one key, the members WavCaps, LAION-Audio-630K and stable-audio-tools shards
hold::

    <key>.flac       the clip's audio as its file has it (rate and channels), lossless FLAC
                     (16-bit for 8/16-bit sources, else 24-bit)
    <key>.json       {"text": [captions], "id": ..., "label": ..., "meta": {...}}
    <key>.mel.npy    with --with-mel: the recipe's log-mel of the clip [T, n_mels], float32

Shards are ``<split>-000000.tar``, ``<split>-000001.tar``, ... of ``shard_size`` clips,
written in the reader's order, with fixed member metadata (same input, same bytes);
``index.json`` lists each split's shards and clip counts, the recipe's audio settings and
prepare's report. The whole folder is written beside ``--out`` and renamed into place once
every shard is complete: a failure leaves nothing.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .config import AudioConfig
from .items import Item

#: soundfile subtypes kept at 16 bits in FLAC; anything deeper (24/32-bit, float) is written at 24
SIXTEEN_BITS = {"PCM_S8", "PCM_U8", "PCM_16", "ULAW", "ALAW", "GSM610", "IMA_ADPCM", "MS_ADPCM", "DWVW_12",
                "DWVW_16"}


@dataclass
class ShardSet:
    """What was written for one split."""

    split: str
    shards: list[dict]  # {"file", "items", "bytes"}

    @property
    def items(self) -> int:
        return sum(s["items"] for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)


def key_of(index: int, item: Item) -> str:
    """The member key of the ``index``-th clip: unique, sortable, without the dots that
    separate a WebDataset key from its extensions."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", item.id).strip("_")[:60]
    return f"{index:08d}" + (f"_{stem}" if stem else "")


def _jsonable(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def encode_flac(path: Path) -> bytes:
    """The file's audio, at its own rate and channels, as FLAC bytes."""
    import soundfile as sf

    info = sf.info(str(path))
    data, rate = sf.read(str(path), dtype="float32" if info.subtype not in SIXTEEN_BITS else "int16", always_2d=True)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="FLAC", subtype="PCM_16" if info.subtype in SIXTEEN_BITS else "PCM_24")
    return buf.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_split(split: str, items: list[Item], audio: AudioConfig, folder: Path, shard_size: int, *,
                with_mel: bool = False, progress: Callable[[], None] | None = None) -> ShardSet:
    """Write ``items`` (usable ones: checked first) as ``folder/<split>-NNNNNN.tar``."""
    shards: list[dict] = []
    for start in range(0, len(items), shard_size):
        name = f"{split}-{len(shards):06d}.tar"
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, item in enumerate(items[start:start + shard_size]):
                key = key_of(start + offset, item)
                _member(tar, f"{key}.flac", encode_flac(item.audio))
                record = {"text": list(item.captions), "id": item.id, "label": item.label,
                          "meta": _jsonable(item.meta)}
                _member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
                if with_mel:
                    _member(tar, f"{key}.mel.npy", _mel_npy(item, audio))
                if progress is not None:
                    progress()
        count = min(shard_size, len(items) - start)
        shards.append({"file": name, "items": count, "bytes": (folder / name).stat().st_size})
    return ShardSet(split, shards)


def _mel_npy(item: Item, audio: AudioConfig) -> bytes:
    from .audio import load_clip, mono
    from .mel import clip_mel

    clip = load_clip(item.audio, audio)
    mel = clip_mel(mono(clip.wave, audio.channels), audio).numpy().astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, mel, allow_pickle=False)
    return buf.getvalue()
