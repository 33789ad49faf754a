"""``tta-run RECIPE prepare``: read the recipe's datasets, check every file, fill the mel cache.

Each file is decoded once (in DataLoader workers) and judged by the rules of
:mod:`tta_core.data.audio`; files already in the cache under their current fingerprint are
not decoded again. The report gives, per split: rows, usable items, skips by reason and
the fixes applied (mixed to mono, resampled, padded, cropped). It fails (DataError, exit 1)
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

from ..errors import DataError, UsageError
from .audio import BadAudio, load_clip, mono
from .cache import FeatureCache, fingerprint, mel_cache
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
        if self.reused or self.computed:
            out.append(f"  mel cache: {self.computed} computed, {self.reused} reused")
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "rows": self.rows, "kept": self.kept,
                "skipped": dict(self.skipped), "skipped_where": self.skipped_where,
                "fixed": dict(self.fixed), "mel_computed": self.computed, "mel_reused": self.reused}


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
                workers: int = 0) -> tuple[SplitReport, list[Item]]:
    """Judge every item of one split; fill ``cache``. Returns the report and the usable items."""
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
        import torch

        probe = _Probe([items[i] for i in todo], audio, with_mel=cache is not None)
        loader = torch.utils.data.DataLoader(probe, batch_size=None, num_workers=workers, collate_fn=_identity,
                                             timeout=300 if workers else 0)
        for out in loader:
            i = todo[out["i"]]
            out["i"] = i
            results[i] = out
            if cache is not None and "mel" in out:
                cache.put(keys[i], out.pop("mel"), samples=out["samples"], fixes=out["fixes"])
        if cache is not None:
            cache.flush()
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
        elif cache is not None:
            report.computed += 1
    report.kept = len(usable)
    return report, usable


def build_splits(recipe, registry, audio: AudioConfig) -> dict[str, ItemSet]:
    """The recipe's ``data:`` splits, each built by its reader."""
    from ..recipe import build

    data = recipe.get("data")
    if not data:
        raise UsageError(f"recipe '{recipe.name}' has no data: section; add one, e.g.\n"
                         "data:\n  train: {type: jsonl, manifest: data/synth/manifest.jsonl}")
    splits = {}
    for name, node in data.items():
        splits[name] = build(node, "dataset", registry, audio=audio)
        if not isinstance(splits[name], ItemSet):
            raise DataError(f"data.{name}: dataset '{node['type']}' returned {type(splits[name]).__name__}, "
                            "not an ItemSet (build it with tta_core.data.items.Collector)")
    return splits


def prepare(recipe, registry, run_dir: Path, *, workers: int = 0, strict: bool = False, cache: bool = True,
            echo: Callable[[str], None] = print) -> list[SplitReport]:
    """Check every split of ``recipe`` and build the mel cache under ``run_dir/cache``."""
    audio = AudioConfig.from_mapping(recipe.get("audio"))
    splits = build_splits(recipe, registry, audio)
    root = Path(run_dir) / "cache"
    store = mel_cache(root, audio) if cache else None
    reports = []
    for name, items in splits.items():
        report, _ = check_split(name, items, audio, store, workers)
        reports.append(report)
        for line in report.lines():
            echo(line)
    if store is not None:
        live = {fingerprint(i.audio) for s in splits.values() for i in s if i.audio.is_file()}
        unused = store.unused(live)
        echo(f"mel cache: {store.dir} ({len(store)} entries" + (f", {unused} unused" if unused else "") + ")")
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(json.dumps({"audio": audio.to_dict(), "splits": [r.to_dict() for r in reports]},
                                                 indent=2))
    empty = [r.name for r in reports if r.kept == 0]
    if empty:
        raise DataError(f"nothing usable in {', '.join(empty)}: every item was skipped (see the report above)")
    bad = sum(sum(r.skipped.values()) for r in reports)
    if bad and (strict or audio.on_bad_item == "fail"):
        why = "--strict" if strict else "audio.on_bad_item is 'fail'"
        raise DataError(f"{bad} bad item(s) and {why}; fix or remove them (listed above)")
    return reports
