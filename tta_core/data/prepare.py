"""``tta-run RECIPE prepare``: read the recipe's datasets, check every file, fill the mel cache.

Each file is decoded once (in DataLoader workers) and judged by the rules of
:mod:`tta_core.data.audio`; files already in the cache under their current fingerprint are
not decoded again; shards of the cache found damaged (:meth:`FeatureCache.drop_damaged`) are
removed and their items computed again, reported as "rebuilt (damaged)". A progress line
(or bar, on a terminal) follows the decoding. The report gives, per split: rows, usable
items, skips by reason and the fixes applied (mixed to mono, resampled, padded, cropped). It fails (DataError, exit 1)
only when a split has no usable item left, or when bad items exist and either
``audio.on_bad_item`` is ``fail`` or ``--strict`` was given.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..checkpoint import atomic_write
from ..errors import DataError, UsageError
from ..progress import Progress
from .audio import BadAudio, load_clip, mono
from .cache import BlockWriter, FeatureCache, fingerprint, mel_cache
from .config import AudioConfig
from .items import Item, ItemSet

log = logging.getLogger("tta.data")


@dataclass
class SplitReport:
    name: str
    source: str
    rows: int
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_where: dict[str, list[str]] = field(default_factory=dict)
    fixed: Counter = field(default_factory=Counter)
    reused: int = 0
    computed: int = 0
    rebuilt: int = 0

    def lines(self) -> list[str]:
        out = [f"{self.name} ({self.source}): {self.rows} rows, {self.kept} usable, "
               f"{sum(self.skipped.values())} skipped"]
        if self.skipped:
            out.append("  skipped: " + ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())))
            for reason, places in sorted(self.skipped_where.items()):
                more = f" (+{len(places) - 3} more, see the log)" if len(places) > 3 else ""
                out.append(f"    {reason}: {', '.join(places[:3])}{more}")
        if self.fixed:
            out.append("  fixed: " + ", ".join(f"{r} {n}" for r, n in sorted(self.fixed.items())))
        if self.reused or self.computed or self.rebuilt:
            out.append(f"  mel cache: {self.computed} computed, {self.reused} reused"
                       + (f", {self.rebuilt} rebuilt (damaged)" if self.rebuilt else ""))
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "rows": self.rows, "kept": self.kept,
                "skipped": dict(self.skipped), "skipped_where": self.skipped_where,
                "fixed": dict(self.fixed), "mel_computed": self.computed, "mel_reused": self.reused,
                "mel_rebuilt": self.rebuilt}


class _Probe:
    """Decodes one item for checking (a map-style dataset, so DataLoader workers can run it)."""

    def __init__(self, items: list[Item], audio: AudioConfig, with_mel: bool):
        self.items, self.audio, self.with_mel = items, audio, with_mel

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            clip = load_clip(item.audio, self.audio)
        except BadAudio as exc:
            return {"i": i, "reason": exc.reason, "detail": exc.detail}
        out = {"i": i, "samples": int(clip.wave.shape[-1]), "fixes": list(clip.fixes)}
        if self.with_mel:
            from .mel import clip_mel

            out["mel"] = clip_mel(mono(clip.wave, self.audio.channels), self.audio).numpy()
        return out


def _identity(x):
    return x


def check_split(name: str, items: ItemSet, audio: AudioConfig, cache: FeatureCache | None,
                workers: int = 0, rebuild: frozenset[str] = frozenset(),
                progress_every: float | None = None, part=None) -> tuple[SplitReport, list[Item]]:
    """Judge every item of one split; fill ``cache``. Returns the report and the usable items.
    ``rebuild``: keys whose entries were dropped as damaged (counted as rebuilt, not computed).

    The files to decode are taken in blocks of the cache's shard size, each block one shard.
    ``part`` (:class:`tta_core.distributed.Part`, under torchrun): this process
    decodes every world-th block and writes its shards; the results are shared, and rank 0
    writes the one index: the same cache, shard for shard, as one process builds."""
    report = SplitReport(name, items.source, items.rows, skipped=Counter(items.skipped),
                         skipped_where={k: list(v) for k, v in items.skipped_where.items()})
    keys: dict[int, str] = {}
    todo: list[int] = []
    results: dict[int, dict] = {}
    for i, item in enumerate(items):
        try:
            keys[i] = fingerprint(item.audio)
        except OSError:  # removed since the reader listed it
            results[i] = {"i": i, "reason": "missing_file", "detail": ""}
            continue
        if cache is not None and keys[i] in cache:
            results[i] = {"i": i, **cache.info(keys[i]), "reused": True}
        else:
            todo.append(i)
    if todo:
        results.update(_decode(name, items, todo, keys, audio, cache, workers, progress_every, part))
    usable = []
    for i, item in enumerate(items):
        out = results[i]
        if "reason" in out:
            report.skipped[out["reason"]] += 1
            report.skipped_where.setdefault(out["reason"], []).append(str(item.audio))
            log.warning("%s: skipped %s: %s%s", name, item.audio, out["reason"],
                        f" ({out['detail']})" if out.get("detail") else "")
            continue
        usable.append(item)
        report.fixed.update(out["fixes"])
        if out["samples"] < audio.num_samples:
            report.fixed["padded"] += 1
        elif out["samples"] > audio.num_samples:
            report.fixed["cropped"] += 1
        if out.get("reused"):
            report.reused += 1
        elif cache is not None and keys[i] in rebuild:
            report.rebuilt += 1
        elif cache is not None:
            report.computed += 1
    report.kept = len(usable)
    return report, usable


def _decode(name: str, items: ItemSet, todo: list[int], keys: dict[int, str], audio: AudioConfig,
            cache: FeatureCache | None, workers: int, progress_every: float | None, part) -> dict[int, dict]:
    """Decode the items ``todo`` names (this process's blocks of them, under ``part``), putting
    each block's mels into the cache as one shard; every item's result, from all processes."""
    import torch

    writer = BlockWriter(cache, todo, cache.shard_size if cache is not None else 256, part)
    order = [i for k in writer.mine for i in writer.blocks[k]]
    ends = {writer.blocks[k][-1]: k for k in writer.mine}
    results: dict[int, dict] = {}
    probe = _Probe([items[i] for i in order], audio, with_mel=cache is not None)
    loader = torch.utils.data.DataLoader(probe, batch_size=None, num_workers=workers, collate_fn=_identity,
                                         timeout=300 if workers else 0)
    with Progress(len(order), f"prepare {name}", "files", every=progress_every,
                  disable=part is not None and not part.main) as bar:
        for out in loader:
            i = order[out["i"]]
            out["i"] = i
            results[i] = out
            if cache is not None and "mel" in out:
                cache.stage(keys[i], out.pop("mel"), samples=out["samples"], fixes=out["fixes"])
            if i in ends:
                writer.done(ends[i])
            bar.update()
    return {i: r for chunk in writer.finish(results) for i, r in chunk.items()}


def read_split(name: str, node, registry, streams: bool = False, **injected) -> ItemSet:
    """The ItemSet of ``data.<name>`` from its reader; a reader's plain error is prefixed with
    the split it came from (``data.train: manifest ... is a folder``). ``streams``: a
    :class:`tta_core.data.stream.ShardSource` (shards read as a stream) is taken too; else it
    is refused, naming what can read it (training)."""
    from ..recipe import build
    from .stream import ShardSource

    try:
        items = build(node, "dataset", registry, **injected)
    except (UsageError, DataError) as exc:
        if type(exc) not in (UsageError, DataError) or str(exc).startswith("data."):
            raise
        raise type(exc)(f"data.{name}: {exc}") from None
    if isinstance(items, ShardSource):
        if streams:
            return items
        raise UsageError(f"data.{name} is a stream of shards ({node['type']}): training reads it as it goes; "
                         "this command needs files it can list (checked and cached up front: prepare, shard, "
                         "eval --adherence). Point it at a manifest, or write one with the audio the shards hold")
    if not isinstance(items, ItemSet):
        raise DataError(f"data.{name}: dataset '{node['type']}' returned {type(items).__name__}, "
                        "not an ItemSet (build it with tta_core.data.items.Collector)")
    return items


def build_splits(recipe, registry, audio: AudioConfig) -> dict[str, ItemSet]:
    """The recipe's ``data:`` splits, each built by its reader."""
    data = recipe.get("data")
    if not data:
        raise UsageError(f"recipe '{recipe.name}' has no data: section; add one, e.g.\n"
                         "data:\n  train: {type: jsonl, manifest: data/synth/manifest.jsonl}")
    splits = {}
    for name, node in data.items():
        splits[name] = read_split(name, node, registry, audio=audio)
    return splits


def _repair(store: FeatureCache, echo: Callable[[str], None]) -> frozenset[str]:
    """Drop the damaged shards of ``store`` (whole-file hash included); the keys they held."""
    damages = store.drop_damaged(deep=True)
    for d in damages:
        what = f"its {len(d.keys)} entries are computed again" if d.keys else "the cache is built again"
        echo(f"mel cache: {d}; {what}")
    return frozenset().union(*(d.keys for d in damages))


def prepare(recipe, registry, run_dir: Path | None = None, *, workers: int = 0, strict: bool = False,
            cache: bool = True, echo: Callable[[str], None] = print,
            progress_every: float | None = None, part=None, shard_size: int = 256) -> list[SplitReport]:
    """Check every split of ``recipe`` and build (or repair) the mel cache under ``run_dir/cache``
    (default: the recipe's run directory, where ``train`` reads it). ``part``: this process's
    share under torchrun (:func:`check_split`); rank 0 repairs, reports and writes the index.
    ``shard_size``: clips to a cache shard file."""
    main = part is None or part.main
    say = echo if main else (lambda line: None)
    audio = recipe.audio
    splits = build_splits(recipe, registry, audio)
    root = Path(recipe.run_dir if run_dir is None else run_dir) / "cache"
    store = mel_cache(root, audio, shard_size) if cache else None
    rebuild = _repair(store, say) if store is not None and main else frozenset()
    if part is not None:
        from ..distributed import all_gather

        rebuild = frozenset().union(*all_gather(rebuild, part))  # what rank 0 dropped, for every report
        if store is not None:
            store.reload()
    reports = []
    for name, items in splits.items():
        report, _ = check_split(name, items, audio, store, workers, rebuild, progress_every, part)
        reports.append(report)
        for line in report.lines():
            say(line)
    if store is not None:
        live = {fingerprint(i.audio) for s in splits.values() for i in s if i.audio.is_file()}
        unused = store.unused(live)
        say(f"mel cache: {store.dir} ({len(store)} entries" + (f", {unused} unused" if unused else "") + ")")
    if main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(root / "report.json", json.dumps({"audio": audio.to_dict(),
                                                       "splits": [r.to_dict() for r in reports]}, indent=2))
    empty = [r.name for r in reports if r.kept == 0]
    if empty:
        raise DataError(f"nothing usable in {', '.join(empty)}: every item was skipped (see the report above)")
    bad = sum(sum(r.skipped.values()) for r in reports)
    if bad and (strict or audio.on_bad_item == "fail"):
        why = "--strict" if strict else "audio.on_bad_item is 'fail'"
        raise DataError(f"{bad} bad item(s) and {why}; fix or remove them (listed above)")
    return reports
