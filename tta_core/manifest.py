"""The ``manifest.jsonl`` that ``tta-run RECIPE sample`` keeps beside its outputs.

One JSON object per line, one line per written file, in the order they were written. The
file is only ever appended to: each batch's lines go out in one ``write`` on a file opened
with ``O_APPEND`` and are flushed to disk, so an interrupted run leaves whole lines, and a
later run adds its own below. When a file was written again (``sample --overwrite``), its
last line describes it: :func:`latest_rows` is how readers see the folder.

A manifest that ``sample`` did not write (a dataset's, a hand-edited one) is never touched:
:func:`check_sample_manifest` refuses it before anything is generated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from .errors import UsageError

NAME = "manifest.jsonl"

#: Fields every line ``sample`` writes has; a line without them was written by something else.
SAMPLE_FIELDS = ("file", "prompt", "seed", "sample_rate", "recipe")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every line of a sample manifest as a dict (none when the file does not exist). Raises
    UsageError naming the line when one is not a JSON object with the fields ``sample`` writes."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise UsageError(f"{path} is not a file: a sample manifest is a JSON-lines file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(_foreign(path, n, f"not JSON ({exc.msg})")) from None
        missing = [k for k in SAMPLE_FIELDS if k not in row] if isinstance(row, dict) else list(SAMPLE_FIELDS)
        if missing:
            raise UsageError(_foreign(path, n, f"no {', '.join(missing)} field(s), so not a line `tta-run sample` wrote"))
        rows.append(row)
    return rows


def _foreign(path: Path, line: int, why: str) -> str:
    return (f"{path}:{line}: {why}. This folder's manifest was not written by `tta-run sample` (a dataset's, or "
            f"edited by hand), and it is left as it is: give --out a folder of its own (or move {path.name} away)")


def check_sample_manifest(folder: str | os.PathLike) -> list[dict]:
    """The rows of ``folder``'s manifest, after checking it is one ``sample`` may append to."""
    return read_rows(Path(folder) / NAME)


def latest_rows(rows: Iterable[dict]) -> list[dict]:
    """One row per file: the last one written for it (in the order of those last writes)."""
    last: dict[str, dict] = {}
    for row in rows:
        last.pop(row.get("file"), None)
        last[row.get("file")] = row
    return list(last.values())


def append_rows(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append ``rows`` as whole lines in one write, then flush them to disk. Values must be
    valid JSON (no NaN or infinity): a row that is not is refused before anything is written."""
    text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
    if not text:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
