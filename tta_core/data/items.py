"""Dataset items and the collector every reader builds them with, so every format follows the
same rules for bad manifest rows (``docs/data.md`` has the table):

- a row that is not what the format says (bad JSON, not an object, no audio path) -> skip ``bad_row``
- the audio file it names does not exist (or is not a regular file)        -> skip ``missing_file``
- no caption, or only blank ones (captions are stripped; blank ones dropped) -> skip ``no_caption``
- an id seen before in the same dataset (the first one is kept)             -> skip ``duplicate_id``

Readers never raise for a bad row: they count it here, log its place on the ``tta.data``
logger, and the caller (``prepare``, the training dataset) applies ``on_bad_item``.
Imports nothing heavy: recipe validation loads readers.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

log = logging.getLogger("tta.data")

#: Why an item was skipped, for reports; the audio reasons come from tta_core.data.audio.
REASONS = {
    "bad_row": "the metadata row is malformed",
    "missing_file": "the audio file does not exist",
    "no_caption": "no non-blank caption",
    "duplicate_id": "an earlier item has the same id",
    "unreadable": "libsndfile cannot decode the file (or it has 0 bytes)",
    "empty": "the file holds zero samples",
    "too_short": "shorter than audio.min_duration",
    "non_finite": "the file holds NaN or Inf samples",
}


@dataclass(frozen=True)
class Item:
    """One captioned clip. ``captions`` has at least one non-blank string; ``meta`` holds any
    other fields the source had (synthetic sets store their generation parameters there)."""

    id: str
    audio: Path
    captions: tuple[str, ...]
    label: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ItemSet(Sequence):
    """What a ``dataset`` factory returns: the usable items, and what was skipped and why.

    ``skipped``: reason -> count; ``skipped_where``: reason -> the places (paths or
    ``file:line``) in the order met.
    """

    source: str
    items: list[Item] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_where: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    @property
    def rows(self) -> int:
        return len(self.items) + sum(self.skipped.values())

    def __repr__(self) -> str:
        return f"ItemSet({self.source!r}, {len(self.items)} items, skipped {dict(self.skipped)})"


class Collector:
    """Builds an :class:`ItemSet` row by row, applying the rules in the module doc."""

    def __init__(self, source: str):
        self.set = ItemSet(source)
        self._ids: set[str] = set()

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.set.skipped[reason] += 1
        self.set.skipped_where.setdefault(reason, []).append(where)
        log.warning("%s: skipped %s: %s%s", self.set.source, where, reason, f" ({detail})" if detail else "")

    def add(self, *, id: Any, audio: str | os.PathLike, captions: Any, where: str,
            label: Any = None, meta: dict | None = None) -> Item | None:
        """Add one row; ``where`` names it in logs (``manifest.jsonl:12``). None if skipped."""
        texts = [captions] if isinstance(captions, str) else captions
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            texts = []
        texts = tuple(t.strip() for t in texts if t.strip())
        path = Path(audio)
        if not path.is_file():
            self.skip("missing_file", where, str(path))
            return None
        if not texts:
            self.skip("no_caption", where, str(path))
            return None
        id = str(id) if id not in (None, "") else path.stem
        if id in self._ids:
            self.skip("duplicate_id", where, f"id {id!r}")
            return None
        self._ids.add(id)
        item = Item(id, path, texts, None if label is None else str(label), dict(meta or {}))
        self.set.items.append(item)
        return item

    def result(self) -> ItemSet:
        if self.set.skipped:
            log.info("%s: %d items, skipped %s", self.set.source, len(self.set.items), dict(self.set.skipped))
        return self.set


def resolve_path(path: str, base: str | os.PathLike) -> Path:
    """A path from inside a metadata file: absolute as is, else relative to ``base``."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(base) / p
