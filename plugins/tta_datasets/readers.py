"""Dataset readers: metadata in one of the field's layouts -> an ItemSet of captioned clips.

Each reader's keyword signature is what a recipe's ``data:`` node is validated against::

    data:
      train: {type: jsonl, manifest: data/synth/manifest.jsonl}

Paths given in the recipe are relative to the working directory; paths inside a metadata
file are relative to that file (``docs/data.md`` shows each layout). Bad rows are counted and
skipped by :class:`tta_core.data.items.Collector`, never raised; only a metadata file that
cannot be read at all is an error: a missing one is a DataError (exit 1), a folder given
where a file belongs (or a file where a folder belongs) a UsageError (exit 2) that says what
is expected and names the likely file inside the folder.
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from pathlib import Path

from tta_core.plugin import Collector, DataError, ItemSet, UsageError, resolve_path

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3", "aiff", "aif")


def _need_file(path: Path, what: str, expected: str, patterns: tuple[str, ...]) -> None:
    """Fail unless ``path`` is a file. A folder is a recipe mistake (UsageError, exit 2) that
    says what is expected and names the candidates inside it (``patterns``); a missing path
    keeps DataError."""
    if path.is_file():
        return
    if path.is_dir():
        found = sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()})
        if len(found) == 1:
            hint = f" Did you mean {found[0]}?"
        elif found:
            hint = f" It holds {', '.join(str(p) for p in found[:5])}{' ...' if len(found) > 5 else ''}: name one."
        else:
            hint = ""
        raise UsageError(f"{what} {path} is a folder; expected {expected}.{hint}")
    raise DataError(f"{what} not found: {path}")


def _need_dir(path: Path, what: str) -> None:
    """Fail unless ``path`` is a folder; a file there is a recipe mistake (UsageError)."""
    if path.is_dir():
        return
    if path.exists():
        raise UsageError(f"{what} {path} is a file; expected a folder (its parent is {path.parent})")
    raise DataError(f"{what} not found: {path}")


def _open_json(path: Path, what: str, patterns: tuple[str, ...] = ("*.json",)):
    _need_file(path, what, "a JSON file", patterns)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None


def jsonl(manifest: str | list[str]) -> ItemSet:
    """A JSON-lines manifest, one clip per line::

        {"id": "a1", "audio": "audio/a1.wav", "caption": "a dog barks", "label": "dog"}
        {"audio": "b.flac", "caption": ["rain on a roof", "steady rain"]}

    ``audio`` is relative to the manifest; ``caption`` a string or a list (one is drawn per
    epoch); ``id`` defaults to the audio file's stem; other fields are kept in ``item.meta``.
    Several manifests (a list) make one set, each id prefixed by its manifest's folder name
    (``sounds_new/a1``) so that sets made alike do not collide.
    """
    paths = [Path(m) for m in ([manifest] if isinstance(manifest, (str, os.PathLike)) else manifest)]
    if not paths:
        raise DataError("jsonl: manifest is an empty list; name at least one manifest")
    for path in paths:
        _need_file(path, "manifest", "a JSON-lines file (one JSON object per line)", ("manifest.jsonl", "*.jsonl"))
    out = Collector(f"jsonl {paths[0]}" if len(paths) == 1 else f"jsonl {', '.join(map(str, paths))}")
    for path in paths:
        _read_jsonl(path, out, f"{path.parent.name}/" if len(paths) > 1 else "")
    return out.result()


def _read_jsonl(path: Path, out: Collector, prefix: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            where = f"{path}:{n}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                out.skip("bad_row", where, f"not JSON: {exc.msg}")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not row["audio"]:
                out.skip("bad_row", where, "a line is an object with an 'audio' path")
                continue
            meta = {k: v for k, v in row.items() if k not in ("id", "audio", "caption", "label")}
            audio, id_ = resolve_path(row["audio"], path.parent), row.get("id")
            if prefix:
                id_ = prefix + (str(id_) if id_ not in (None, "") else Path(audio).stem)
            out.add(id=id_, audio=audio, captions=row.get("caption"), label=row.get("label"), meta=meta, where=where)


def audiocaps(metadata: str, wav_dir: str = "wav") -> ItemSet:
    """Amphion's layout: a JSON list of ``{"Dataset", "Uid", "Caption"}`` with the audio at
    ``<wav_dir>/<Uid>.wav`` beside the metadata file (``AudioCaps/train.json`` +
    ``AudioCaps/wav/``). Rows sharing a Uid are one clip with several captions."""
    path = Path(metadata)
    rows = _open_json(path, "AudioCaps metadata")
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{Dataset, Uid, Caption}} objects")
    out = Collector(f"audiocaps {path}")
    clips: OrderedDict[tuple, dict] = OrderedDict()
    for i, row in enumerate(rows):
        where = f"{path}[{i}]"
        if not isinstance(row, dict) or not row.get("Uid"):
            out.skip("bad_row", where, "a row is an object with a Uid")
            continue
        key = (str(row.get("Dataset", "")), str(row["Uid"]))
        clip = clips.setdefault(key, {"where": where, "captions": []})
        caption = row.get("Caption")
        clip["captions"] += caption if isinstance(caption, list) else [caption]
    for (dataset, uid), clip in clips.items():
        captions = [c for c in clip["captions"] if isinstance(c, str)]
        out.add(id=f"{dataset}_{uid}" if dataset else uid, audio=resolve_path(f"{wav_dir}/{uid}.wav", path.parent),
                captions=captions, where=clip["where"], meta={"dataset": dataset} if dataset else None)
    return out.result()


def audioldm(dataset_root: str, split: str = "train", datasets: list[str] | None = None,
             base_dir: str | None = None) -> ItemSet:
    """AudioLDM's layout: ``dataset_root.json`` names each dataset's audio root and its
    per-split metadata files::

        {"audiocaps": "audioset",
         "metadata": {"path": {"audiocaps": {"train": "meta/train.json", "val": "meta/val.json"}}}}

    and each metadata file is ``{"data": [{"wav": "<relative to the audio root>", "caption": ...,
    "labels": ...}]}``. Relative paths in dataset_root.json resolve against ``base_dir``
    (default: the folder of dataset_root.json; AudioLDM's own files are written relative to
    its repository root, so point base_dir there). ``datasets`` picks some (default: all).
    """
    path = Path(dataset_root)
    root = _open_json(path, "AudioLDM dataset_root.json", ("dataset_root.json", "*.json"))
    base = Path(base_dir) if base_dir else path.parent
    table = (root.get("metadata") or {}).get("path") if isinstance(root, dict) else None
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected {{\"metadata\": {{\"path\": {{<dataset>: {{<split>: <file>}}}}}}}}")
    names = list(datasets) if datasets is not None else list(table)
    out = Collector(f"audioldm {path} [{split}]")
    for name in names:
        if name not in table or not isinstance(root.get(name), str):
            raise DataError(f"{path}: dataset '{name}' needs an entry under metadata.path and an audio root "
                            f"'{name}': <folder>. Datasets listed: {', '.join(table) or 'none'}.")
        splits = table[name] if isinstance(table[name], dict) else {}
        if split not in splits:
            raise DataError(f"{path}: dataset '{name}' has no split '{split}'. Splits: {', '.join(splits) or 'none'}.")
        meta_path = resolve_path(splits[split], base)
        audio_root = resolve_path(root[name], base)
        rows = _open_json(meta_path, f"AudioLDM metadata of '{name}'")
        rows = rows.get("data") if isinstance(rows, dict) else None
        if not isinstance(rows, list):
            raise DataError(f"{meta_path}: expected {{\"data\": [{{\"wav\": ..., \"caption\": ...}}]}}")
        for i, row in enumerate(rows):
            where = f"{meta_path}[{i}]"
            if not isinstance(row, dict) or not isinstance(row.get("wav"), str) or not row["wav"]:
                out.skip("bad_row", where, "a row is an object with a 'wav' path")
                continue
            labels = row.get("labels")
            out.add(id=row.get("id") or f"{name}/{Path(row['wav']).with_suffix('').as_posix()}",
                    audio=resolve_path(row["wav"], audio_root), captions=row.get("caption"), where=where,
                    label=labels if isinstance(labels, str) and labels else None, meta={"dataset": name})
    return out.result()


def folder(path: str, text_dir: str | None = None, extensions: list[str] = list(AUDIO_EXTENSIONS)) -> ItemSet:
    """A folder of audio files (searched recursively) with captions in text files: a sidecar
    ``x.txt`` beside ``x.wav``, or with ``text_dir`` a parallel folder
    (``audio/birds/x.wav`` + ``text_descriptions/birds/x.txt``). One caption per non-blank line.
    The id is the file's path under ``path`` without its extension."""
    root = Path(path)
    _need_dir(root, "audio folder")
    texts = Path(text_dir) if text_dir else root
    _need_dir(texts, "caption folder")
    suffixes = {"." + e.lower().lstrip(".") for e in extensions}
    out = Collector(f"folder {root}")
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()):
        rel = audio.relative_to(root).with_suffix("")
        txt = (texts / rel).with_suffix(".txt")
        try:
            captions = txt.read_text(encoding="utf-8", errors="replace").splitlines() if txt.is_file() else []
        except OSError:
            captions = []
        out.add(id=rel.as_posix(), audio=audio, captions=captions, where=str(audio))
    return out.result()


def clotho(csv_file: str, audio_dir: str | None = None) -> ItemSet:
    """Clotho: ``clotho_captions_<split>.csv`` with columns ``file_name, caption_1 .. caption_5``,
    the audio in ``<split>/`` beside it (or ``audio_dir``). The id is the file name."""
    path = Path(csv_file)
    _need_file(path, "Clotho captions CSV", "a CSV file", ("clotho_captions_*.csv", "*.csv"))
    if audio_dir is None:
        split = path.stem.removeprefix("clotho_captions_")
        audio_root = path.parent / split
        if not audio_root.is_dir():
            raise DataError(f"Clotho audio folder not found at {audio_root}; name it with audio_dir:")
    else:
        audio_root = Path(audio_dir)
        _need_dir(audio_root, "Clotho audio folder")
    out = Collector(f"clotho {path}")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in (reader.fieldnames or []) if c.startswith("caption")]
        if "file_name" not in (reader.fieldnames or []) or not columns:
            raise DataError(f"{path}: expected a header with file_name and caption_1 .. caption_5, "
                            f"got {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            where = f"{path}:{n}"
            name = (row.get("file_name") or "").strip()
            if not name:
                out.skip("bad_row", where, "no file_name")
                continue
            out.add(id=name, audio=audio_root / name, captions=[row.get(c) or "" for c in columns], where=where)
    return out.result()


def webdataset(shards: str | list[str], shuffle: int = 1000, lanes: int | None = None):
    """WebDataset tar shards, read as a stream while training (never all on disk): per key an
    audio member (flac, wav, mp3, ogg or opus) and a JSON caption (``text``, ``caption`` or
    ``captions``), the layout of WavCaps, LAION-Audio-630K, stable-audio-tools and ``tta-run
    RECIPE shard``::

        data:
          train: {type: webdataset, shards: "data/shards/train-{000000..000099}.tar", shuffle: 1000}

    ``shards``: a brace pattern, a list, a folder of ``*.tar``, or URLs ``webdataset.gopen``
    opens (``pipe:curl -s https://...``, http(s), s3). ``shuffle``: samples in each lane's
    shuffle buffer. ``lanes``: how many shards are read side by side (default: the largest
    divisor of the batch size up to the number of shards; under torchrun a multiple of the
    processes). The order and resuming: :mod:`tta_core.data.stream`.
    """
    from tta_core.plugin import ShardSource, expand_shards

    urls = expand_shards(shards)
    if not urls:
        raise DataError(f"webdataset: no shards in {shards!r}")
    missing = [u for u in urls if not u.startswith("pipe:") and "://" not in u and not os.path.isfile(u)]
    if missing:
        raise DataError(f"webdataset: {len(missing)} shard(s) not found: {', '.join(missing[:3])}"
                        + (" ..." if len(missing) > 3 else ""))
    if not isinstance(shuffle, int) or isinstance(shuffle, bool) or shuffle < 1:
        raise UsageError(f"webdataset: shuffle is a number of samples, at least 1 (1: no shuffling), got {shuffle!r}")
    if lanes is not None and (not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1):
        raise UsageError(f"webdataset: lanes is a number of shards read side by side, at least 1, got {lanes!r}")
    return ShardSource(urls, shuffle=shuffle, lanes=lanes, source=f"webdataset {shards}")
