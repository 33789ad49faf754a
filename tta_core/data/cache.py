"""On-disk feature caches: arrays per item, in safetensors shards, never stale.

Layout under a run's cache folder (``runs/<recipe>/cache/`` by default)::

    mel-<settings digest>/           one folder per feature and settings
      settings.json                  the settings that made it (audio section minus on_bad_item)
      index.json                     key -> {"shard": file, and per-item info}
      shard-00000.safetensors        up to ``shard_size`` arrays, named by key

Two things key an entry, so neither a changed setting nor a changed file is ever served from
an old computation: the folder is named by the digest of the settings, and an item's key is
the fingerprint of its file (resolved path, size, mtime in ns). An edited file gets a new
key; its old entry stays unused in its shard (``prepare`` reports how many are unused).

The same class holds the later caches, for the stages that fill them: :func:`latent_cache`
(settings: the audio settings and the autoencoder's weights digest; keyed by file
fingerprint) and :func:`text_cache` (the conditioner's digest; keyed by :func:`text_key`). Shards are
written to a temporary name and renamed, then the index, so a crash never leaves an index
naming a missing shard. Readers (DataLoader workers) only read; ``prepare`` writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..checkpoint import atomic_write


def digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(path: str | os.PathLike) -> str:
    """The cache key of a file: its resolved path, size and modification time (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha1(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def text_key(text: str) -> str:
    """The cache key of a caption (for text-embedding caches)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Arrays keyed by string, for one feature computed with one set of settings."""

    def __init__(self, root: str | os.PathLike, feature: str, settings: Mapping[str, Any], shard_size: int = 256):
        self.settings = dict(settings)
        self.feature = feature
        self.dir = Path(root) / f"{feature}-{digest(self.settings)}"
        self.shard_size = shard_size
        self._index: dict[str, dict] | None = None
        self._handles: dict[str, Any] = {}
        self._pending: dict[str, tuple[np.ndarray, dict]] = {}

    # -- reading ---------------------------------------------------------------------------
    @property
    def index(self) -> dict[str, dict]:
        if self._index is None:
            path = self.dir / "index.json"
            self._index = json.loads(path.read_text()) if path.is_file() else {}
        return self._index

    def reload(self) -> None:
        """Forget the index read so far (another process has written to the cache)."""
        self._index, self._handles = None, {}

    def __contains__(self, key: str) -> bool:
        return key in self.index or key in self._pending

    def __len__(self) -> int:
        return len(self.index) + len(self._pending)

    def info(self, key: str) -> dict | None:
        """What was stored beside the array (frames, fixes, ...), or None."""
        entry = self.index.get(key) or (self._pending[key][1] if key in self._pending else None)
        return None if entry is None else {k: v for k, v in entry.items() if k != "shard"}

    def get(self, key: str) -> np.ndarray | None:
        if key in self._pending:
            return self._pending[key][0]
        entry = self.index.get(key)
        if entry is None:
            return None
        handle = self._handles.get(entry["shard"])
        if handle is None:
            from safetensors import safe_open

            handle = self._handles[entry["shard"]] = safe_open(str(self.dir / entry["shard"]), framework="np")
        return handle.get_tensor(key)

    def __getstate__(self):  # open shard handles do not cross into DataLoader workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, array: np.ndarray, **info: Any) -> None:
        """Stage one array (written with the next full shard, or by :meth:`flush`)."""
        self._pending[key] = (np.ascontiguousarray(array), info)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        from safetensors.numpy import save

        self.dir.mkdir(parents=True, exist_ok=True)
        settings = self.dir / "settings.json"
        if not settings.exists():
            atomic_write(settings, json.dumps(self.settings, indent=2, sort_keys=True, default=str))
        n = len(list(self.dir.glob("shard-*.safetensors")))
        while (self.dir / f"shard-{n:05d}.safetensors").exists():
            n += 1
        name = f"shard-{n:05d}.safetensors"
        atomic_write(self.dir / name, save({k: a for k, (a, _) in self._pending.items()}))
        index = dict(self.index)
        index.update({k: {"shard": name, **info} for k, (_, info) in self._pending.items()})
        atomic_write(self.dir / "index.json", json.dumps(index))
        self._index, self._pending = index, {}

    def unused(self, live: set[str]) -> int:
        """Entries not among ``live`` keys (files since edited or removed)."""
        return len(set(self.index) - live)


def mel_cache(root: str | os.PathLike, audio) -> FeatureCache:
    """The mel cache of an :class:`~tta_core.data.config.AudioConfig` under ``root``; keys are
    :func:`fingerprint` of the audio file."""
    return FeatureCache(root, "mel", audio.cache_settings())


def latent_cache(root: str | os.PathLike, audio, autoencoder: str) -> FeatureCache:
    """Latents of the clips' mels (or waves) under one autoencoder; ``autoencoder`` is a digest
    of its weights, so retraining it starts a new cache. Keys are :func:`fingerprint` of the
    audio file, as in the mel cache."""
    return FeatureCache(root, "latent", {"audio": audio.cache_settings(), "autoencoder": autoencoder})


def text_cache(root: str | os.PathLike, conditioner: str) -> FeatureCache:
    """Text embeddings under one conditioner (``conditioner``: a digest of its weights and
    settings); keys are :func:`text_key` of the caption."""
    return FeatureCache(root, "text", {"conditioner": conditioner})
