"""On-disk feature caches: arrays per item, in safetensors shards, never stale, checked on use.

Layout under a run's cache folder (``runs/<recipe>/cache/`` by default)::

    mel-<settings digest>/           one folder per feature and settings
      settings.json                  the settings that made it (audio section minus on_bad_item)
      index.json                     {"format": 2, "shards": {file: {"bytes", "sha256"}},
                                      "items": {key: {"shard": file, and per-item info}}}
      shard-00000.safetensors        up to ``shard_size`` arrays, named by key

Two things key an entry, so neither a changed setting nor a changed file is ever served from
an old computation: the folder is named by the digest of the settings, and an item's key is
the fingerprint of its file (resolved path, size, mtime in ns). An edited file gets a new
key; its old entry stays unused in its shard (``prepare`` reports how many are unused).

The same class holds the later caches, for the stages that fill them: :func:`latent_cache`
(settings: the audio settings and the autoencoder's weights digest; keyed by file
fingerprint) and :func:`text_cache` (the conditioner's digest; keyed by :func:`text_key`). Shards are
written to a temporary name and renamed, then the index, so a crash never leaves an index
naming a missing or partial shard. Readers (DataLoader workers) only read; ``prepare`` writes.

A shard damaged after it was written (a full disk, a copy cut short, a bad sector) is found,
not served: the index records each shard's length and sha256, and a shard is checked before
its first read (length and safetensors header; :meth:`FeatureCache.damage`, and with
``deep=True`` the sha256 too). Readers raise :class:`DamagedCache` naming the file and the
command that rebuilds it; writers call :meth:`FeatureCache.drop_damaged`, which forgets the
damaged shards' entries and removes those files, so the entries are computed again.
Indexes written before format 2 (a flat key -> entry map) are read; their shards get the
length and header check only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..checkpoint import atomic_write
from ..errors import DataError

INDEX_FORMAT = 2
_HASH_QUIETLY = 1 << 30  # bytes a deep check reads before it shows progress (about a second)


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


@dataclass(frozen=True)
class Damage:
    """A cache file that cannot be used: ``path`` (a shard, or the index), what is wrong with
    it, and the keys it held (all of them when the index itself is damaged)."""

    path: Path
    problem: str
    keys: frozenset = frozenset()

    def __str__(self) -> str:
        return f"{self.path} {self.problem}"


class DamagedCache(DataError):
    """A cache file is damaged; the message names it and the command that rebuilds it."""

    def __init__(self, damages: Iterable[Damage], next_step: str):
        self.damages = list(damages)
        listed = "\n  ".join(str(d) for d in self.damages)
        super().__init__(f"damaged cache file{'s' if len(self.damages) > 1 else ''}:\n  {listed}\n{next_step}")


def check_shard(path: Path, record: Mapping[str, Any] | None = None, keys: Iterable[str] = (),
                deep: bool = False) -> str | None:
    """What is wrong with the safetensors shard at ``path`` (None: nothing found). Checks the
    length written (``record["bytes"]``), that the header parses and the data it describes
    is all there, that it holds ``keys``, and with ``deep`` the recorded sha256."""
    try:
        size = path.stat().st_size
    except OSError:
        return "is missing"
    if not path.is_file():
        return "is not a file"
    want = (record or {}).get("bytes")
    if want is not None and want != size:
        return f"is truncated ({size} of {want} bytes)" if size < want else f"has {size} bytes, {want} were written"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or n > size - 8:
                return f"is truncated ({size} bytes, shorter than its header)"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"has an unreadable safetensors header ({type(exc).__name__})"
    if size != 8 + n + end:
        return (f"is truncated ({size} of {8 + n + end} bytes)" if size < 8 + n + end
                else f"has {size - 8 - n - end} bytes after its data")
    missing = [k for k in keys if k not in header]
    if missing:
        return f"lacks {len(missing)} of the entries the index puts in it"
    if deep and (record or {}).get("sha256"):
        try:
            same = hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
        except OSError as exc:
            return f"cannot be read ({exc.strerror or type(exc).__name__})"
        if not same:
            return "has changed since it was written (sha256 differs)"
    return None


class FeatureCache:
    """Arrays keyed by string, for one feature computed with one set of settings.

    ``rebuilt_by`` names the verb that rebuilds it (``prepare`` for mels, ``train`` for the
    caches a stage fills), for the message of :class:`DamagedCache`. A key ``<base>.<part>``
    (a latent's ``.std``, a caption's ``.mask``) belongs with ``<base>``: when a damaged shard
    loses one of them, :meth:`drop_damaged` drops them all, so none is served without the other.
    """

    def __init__(self, root: str | os.PathLike, feature: str, settings: Mapping[str, Any], shard_size: int = 256,
                 rebuilt_by: str = "prepare"):
        self.settings = dict(settings)
        self.feature = feature
        self.dir = Path(root) / f"{feature}-{digest(self.settings)}"
        self.shard_size = shard_size
        self.rebuilt_by = rebuilt_by
        self._index: dict[str, dict] | None = None
        self._shards: dict[str, dict | None] = {}
        self._index_problem: str | None = None
        self._handles: dict[str, Any] = {}
        self._pending: dict[str, tuple[np.ndarray, dict]] = {}

    # -- reading ---------------------------------------------------------------------------
    @property
    def index(self) -> dict[str, dict]:
        """key -> {"shard": file, and the info stored beside the array}."""
        if self._index is None:
            self._load_index()
        return self._index

    def _load_index(self) -> None:
        path = self.dir / "index.json"
        self._index, self._shards, self._index_problem = {}, {}, None
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("format") == INDEX_FORMAT:
                items, shards = data["items"], data["shards"]
            else:  # format 1: key -> entry; no shard records
                items, shards = data, {}
            if not all(isinstance(e, dict) and isinstance(e.get("shard"), str) for e in items.values()):
                raise ValueError("an entry names no shard")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._index_problem = f"is unreadable ({type(exc).__name__}: {exc})"[:200]
            return
        self._index = items
        self._shards = {name: shards.get(name) for name in sorted({e["shard"] for e in items.values()})}

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
        """The array stored under ``key`` (None when there is none); raises
        :class:`DamagedCache` when its shard is damaged."""
        if key in self._pending:
            return self._pending[key][0]
        entry = self.index.get(key)
        if entry is None:
            return None
        name = entry["shard"]
        handle = self._handles.get(name)
        path = self.dir / name
        try:
            if handle is None:
                problem = check_shard(path, self._shards.get(name))
                if problem:
                    raise DamagedCache([Damage(path, problem)], self.next_step())
                from safetensors import safe_open

                handle = self._handles[name] = safe_open(str(path), framework="np")
            return handle.get_tensor(key)
        except DamagedCache:
            raise
        except Exception as exc:  # safetensors' errors name no file
            raise DamagedCache([Damage(path, f"cannot be read ({type(exc).__name__}: {exc})")],
                               self.next_step()) from None

    def __getstate__(self):  # open shard handles do not cross into DataLoader workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    # -- checking --------------------------------------------------------------------------
    def next_step(self, recipe: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None) -> str:
        """What a user runs to rebuild this cache (``run_dir``: when not the default one)."""
        where = f" --run-dir {run_dir}" if run_dir else ""
        return f"run `tta-run {recipe or 'RECIPE'} {self.rebuilt_by}{where}` to rebuild it"

    def damage(self, deep: bool = False) -> list[Damage]:
        """Every damaged file of the cache (empty: all is well). Reads each shard's header;
        ``deep`` also hashes each shard (reads the whole cache)."""
        index = self.index
        if self._index_problem:
            files = sorted(self.dir.glob("shard-*.safetensors"))
            return [Damage(self.dir / "index.json", self._index_problem + f"; {len(files)} shard(s) unusable")]
        by_shard: dict[str, set[str]] = {}
        for key, entry in index.items():
            by_shard.setdefault(entry["shard"], set()).add(key)
        out = []
        from ..progress import Progress

        big = deep and sum((r or {}).get("bytes", 0) for r in self._shards.values()) > _HASH_QUIETLY
        with Progress(len(by_shard), f"check {self.feature} cache", "shards", disable=not big) as bar:
            for name, keys in sorted(by_shard.items()):
                problem = check_shard(self.dir / name, self._shards.get(name), keys, deep=deep)
                if problem:
                    out.append(Damage(self.dir / name, problem, frozenset(keys)))
                bar.update()
        return out

    def require_intact(self, recipe: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None) -> None:
        """Raise :class:`DamagedCache` (exit 1) naming every damaged file, with the command
        that rebuilds the cache (``recipe``, ``run_dir``: what to put in it)."""
        damages = self.damage()
        if damages:
            raise DamagedCache(damages, self.next_step(recipe, run_dir))

    def drop_damaged(self, deep: bool = False) -> list[Damage]:
        """Forget the entries of damaged shards (so they are computed again) and remove those
        files; a damaged index drops the whole cache. Returns what was damaged."""
        damages = self.damage(deep=deep)
        if not damages:
            return []
        if self._index_problem:
            gone = sorted(self.dir.glob("shard-*.safetensors"))
            self._index, self._shards, self._index_problem = {}, {}, None
        else:
            gone = [d.path for d in damages]
            names = {d.path.name for d in damages}
            bases = {k.split(".", 1)[0] for d in damages for k in d.keys}
            self._index = {k: e for k, e in self.index.items()
                           if e["shard"] not in names and k.split(".", 1)[0] not in bases}
            self._shards = {n: r for n, r in self._shards.items() if n not in names}
        self._handles = {}
        self._write_index()  # first, so no index ever names a removed shard
        for path in gone:
            path.unlink(missing_ok=True)
        return damages

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, array: np.ndarray, **info: Any) -> None:
        """Stage one array (written with the next full shard, or by :meth:`flush`)."""
        self.stage(key, array, **info)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def stage(self, key: str, array: np.ndarray, **info: Any) -> None:
        """Stage one array for the next :meth:`flush` or :meth:`write_shard`, however many are staged."""
        self._pending[key] = (np.ascontiguousarray(array), info)

    @property
    def staged(self) -> int:
        return len(self._pending)

    def next_shard(self) -> int:
        """The number the next shard written gets (the first free one)."""
        n = len(list(self.dir.glob("shard-*.safetensors")))
        while (self.dir / f"shard-{n:05d}.safetensors").exists():
            n += 1
        return n

    def flush(self) -> None:
        """Write what :meth:`put` staged as the next shard, and the index."""
        if not self._pending:
            return
        self.merge([self.write_shard(self.next_shard())])

    def write_shard(self, number: int) -> tuple[str, dict, dict]:
        """Write the staged arrays as ``shard-<number>``, leaving the index as it is (so that
        several processes can each write shards that one of them then indexes: :meth:`merge`).
        Returns (file name, its record, key -> entry)."""
        from safetensors.numpy import save

        self.dir.mkdir(parents=True, exist_ok=True)
        settings = self.dir / "settings.json"
        if not settings.exists():
            atomic_write(settings, json.dumps(self.settings, indent=2, sort_keys=True, default=str))
        name = f"shard-{number:05d}.safetensors"
        data = save({k: a for k, (a, _) in self._pending.items()})
        atomic_write(self.dir / name, data)
        entries = {k: {"shard": name, **info} for k, (_, info) in self._pending.items()}
        self._pending = {}
        return name, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, entries

    def merge(self, shards: Iterable[tuple[str, dict, dict]], write: bool = True) -> None:
        """Add written shards (:meth:`write_shard`'s results, in order) to the index, and
        write it (``write``; one process does, where several wrote shards)."""
        index = dict(self.index)
        for name, record, entries in shards:
            index.update(entries)
            self._shards[name] = record
        self._index = index
        if write:
            self._write_index()

    def _write_index(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        live = {e["shard"] for e in self.index.values()}
        shards = {n: r for n, r in self._shards.items() if n in live and r is not None}
        atomic_write(self.dir / "index.json",
                     json.dumps({"format": INDEX_FORMAT, "shards": shards, "items": self.index}))

    def unused(self, live: set[str]) -> int:
        """Entries not among ``live`` keys (files since edited or removed)."""
        return len(set(self.index) - live)


class BlockWriter:
    """Fills a cache in blocks of ``size`` items of ``todo``, one shard per block, numbered as
    one process numbers them: block ``k`` becomes shard ``first + k``, ``first`` being the
    first free number when the fill starts. In one process each shard is indexed as soon as it
    is written (an interrupted fill keeps what it made). Under ``part``
    (:class:`tta_core.distributed.Part`, torchrun) this process fills only its blocks
    (:attr:`mine`), and :meth:`finish` has rank 0 index every process's shards: the cache one
    process fills, byte for byte. ``cache`` None: the blocks only (work split, nothing stored)."""

    def __init__(self, cache: FeatureCache | None, todo: list, size: int, part: Any = None):
        self.cache, self.part = cache, part
        self.blocks = [todo[k:k + size] for k in range(0, len(todo), size)]
        self.mine = [k for k in range(len(self.blocks)) if part is None or part.mine(k)]
        self.first = cache.next_shard() if cache is not None else 0
        self._shards: list[tuple[str, dict, dict]] = []
        if part is not None:
            from ..distributed import barrier

            barrier()  # every process has read the first free shard number before any writes one

    def done(self, k: int) -> None:
        """Write what block ``k`` staged (:meth:`FeatureCache.stage`) as its shard."""
        if self.cache is None or not self.cache.staged:
            return
        shard = self.cache.write_shard(self.first + k)
        if self.part is None:
            self.cache.merge([shard])
        else:
            self._shards.append(shard)

    def finish(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (``[value]`` in one process); under
        ``part`` rank 0 indexes every process's shards first."""
        if self.part is None:
            return [value]
        from ..distributed import all_gather, barrier

        every = all_gather((self._shards, value), self.part)
        if self.cache is not None:
            self.cache.merge(sorted((w for shards, _ in every for w in shards), key=lambda w: w[0]),
                             write=self.part.main)
            barrier()  # the index is written
        return [v for _, v in every]


def mel_cache(root: str | os.PathLike, audio, shard_size: int = 256) -> FeatureCache:
    """The mel cache of an :class:`~tta_core.data.config.AudioConfig` under ``root``; keys are
    :func:`fingerprint` of the audio file. ``tta-run RECIPE prepare`` fills and repairs it,
    ``shard_size`` clips to a shard file."""
    return FeatureCache(root, "mel", audio.cache_settings(), shard_size=shard_size)


def latent_cache(root: str | os.PathLike, audio, autoencoder: str, shard_size: int = 256) -> FeatureCache:
    """Latents of the clips' mels (or waves) under one autoencoder; ``autoencoder`` is a digest
    of its weights, so retraining it starts a new cache. Keys are :func:`fingerprint` of the
    audio file, as in the mel cache. The stage that trains on it fills and repairs it."""
    return FeatureCache(root, "latent", {"audio": audio.cache_settings(), "autoencoder": autoencoder},
                        shard_size=shard_size, rebuilt_by="train")


def text_cache(root: str | os.PathLike, conditioner: str, shard_size: int = 256) -> FeatureCache:
    """Text embeddings under one conditioner (``conditioner``: a digest of its weights and
    settings); keys are :func:`text_key` of the caption."""
    return FeatureCache(root, "text", {"conditioner": conditioner}, shard_size=shard_size, rebuilt_by="train")
