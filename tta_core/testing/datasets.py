"""``check_dataset_reader``: a ``dataset`` reader (metadata -> ItemSet) under the rules of
docs/data.md, read-only on the dataset it reads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ._common import _fail, changes, snapshot

#: What stands in for a metadata file that cannot be read as one: bytes that are no text,
#: an empty file, JSON of another shape, plain text.
_GARBAGE = {"binary.dat": b"\xff\xfe\x00\x81\x00garbage\x00", "empty.dat": b"", "shape.json": b'{"x": [1, 2]}',
            "text.dat": b"this is not metadata\n"}


def check_dataset_reader(reader: Callable[..., Any], root: str | os.PathLike, kwargs: Mapping[str, Any], *,
                         metadata: str, items: int | None = None, skipped: Mapping[str, int] | None = None) -> None:
    """``reader(**kwargs)`` on a small dataset the test wrote under ``root`` (bad rows
    included, to see them skipped), where ``kwargs[metadata]`` names its metadata file (or
    folder):

    - it returns an :class:`~tta_core.data.items.ItemSet` of ``Item``: unique string ids,
      audio paths that name existing files, captions a non-empty tuple of stripped, non-blank
      strings; ``items`` of them when given;
    - bad rows are counted, not raised: ``skipped`` (reason -> count) equals ``skipped`` when
      given, and ``skipped_where`` lists one place per skipped row;
    - reading twice gives the same items;
    - a missing metadata path is a :class:`~tta_core.errors.DataError` naming it; metadata
      that cannot be read as such (binary bytes, an empty file, JSON of another shape, plain
      text) is a DataError or UsageError naming the file, or rows skipped, never another
      exception;
    - nothing under ``root`` changes (every file hashed before and after).
    """
    if metadata not in kwargs:
        raise ValueError(f"kwargs has no '{metadata}' (the argument naming the metadata)")
    before = snapshot([root])
    try:
        _check_reads(reader, kwargs, metadata, items, skipped)
    finally:  # a changed dataset is the worst finding: it is reported before any other
        changed = changes(before, snapshot([root]))
        if changed:
            _fail(reader, f"changed the dataset: {'; '.join(changed)}")


def _check_reads(reader: Any, kwargs: Mapping[str, Any], metadata: str, items: int | None,
                 skipped: Mapping[str, int] | None) -> None:
    from ..data.items import Item, ItemSet

    first = reader(**kwargs)
    if not isinstance(first, ItemSet):
        _fail(reader, f"must return an ItemSet (tta_core.plugin.Collector(...).result()), got {type(first).__name__}")
    ids: set = set()
    for item in first:
        if not isinstance(item, Item):
            _fail(reader, f"holds a {type(item).__name__}, not an Item")
        _check_item(reader, item, ids)
    if items is not None and len(first) != items:
        _fail(reader, f"read {len(first)} items, expected {items}")
    _check_skips(reader, first, skipped)
    again = reader(**kwargs)
    if list(first) != list(again) or dict(first.skipped) != dict(again.skipped):
        _fail(reader, "two reads of the same dataset give different items")
    _check_unreadable(reader, kwargs, metadata)


def _check_item(reader: Any, item: Any, ids: set) -> None:
    if not isinstance(item.id, str) or not item.id or item.id in ids:
        _fail(reader, f"item id {item.id!r} is not a unique non-empty string")
    ids.add(item.id)
    if not Path(item.audio).is_file():
        _fail(reader, f"item {item.id!r} names {item.audio}, which is not a file (a missing one is skipped as "
                      "missing_file)")
    caps = item.captions
    if not isinstance(caps, tuple) or not caps or not all(isinstance(c, str) and c and c == c.strip() for c in caps):
        _fail(reader, f"item {item.id!r} has captions {caps!r}: a non-empty tuple of stripped, non-blank strings")


def _check_skips(reader: Any, found: Any, skipped: Mapping[str, int] | None) -> None:
    counts = dict(found.skipped)
    if skipped is not None and counts != {k: v for k, v in skipped.items() if v}:
        _fail(reader, f"skipped {counts or 'nothing'}, expected {dict(skipped)}")
    for reason, n in counts.items():
        if len(found.skipped_where.get(reason, ())) != n:
            _fail(reader, f"skipped {n} rows as {reason} but lists {len(found.skipped_where.get(reason, ()))} places")


def _check_unreadable(reader: Any, kwargs: Mapping[str, Any], metadata: str) -> None:
    from ..errors import DataError, TtaError

    with tempfile.TemporaryDirectory(prefix="tta-reader-") as tmp:
        missing = Path(tmp) / "missing" / Path(str(kwargs[metadata])).name
        try:
            reader(**{**kwargs, metadata: str(missing)})
        except DataError as exc:
            if str(missing) not in str(exc):
                _fail(reader, f"the DataError for a missing {metadata} does not name it: {exc}")
        except Exception as exc:
            _fail(reader, f"a missing {metadata} raised {type(exc).__name__}: {exc}; expected a DataError naming it")
        else:
            _fail(reader, f"a missing {metadata} ({missing}) was read without an error")
        if Path(str(kwargs[metadata])).is_dir():
            return  # the metadata is a folder: no file to garble
        for name, content in _GARBAGE.items():
            path = Path(tmp) / name
            path.write_bytes(content)
            try:
                reader(**{**kwargs, metadata: str(path)})
            except TtaError as exc:
                if str(path) not in str(exc):
                    _fail(reader, f"the error for an unreadable {metadata} ({name}) does not name the file: {exc}")
            except Exception as exc:
                _fail(reader, f"an unreadable {metadata} ({name}) raised {type(exc).__name__}: {exc}; expected "
                              "a DataError naming the file, or its rows skipped")
