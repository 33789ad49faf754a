"""``tta-run synth sounds|birds`` and ``tta-run RECIPE prepare`` (docs/data.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .base import Command, Verb, check_writable, load_plugins, load_recipe, number, run_dir
from ..errors import UsageError


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["sounds", "birds"], help="sounds: 8 simple sound kinds; birds: 5 bird species")
    p.add_argument("--out", required=True, help="folder to write audio/ and manifest.jsonl into")
    p.add_argument("--n", type=number(int, min=1), default=256, help="number of clips (default 256, balanced over labels)")
    p.add_argument("--seed", type=number(int, min=0), default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--duration", type=number(float, min=0.1, max=600), default=2.0,
                   help="seconds per clip (default 2.0)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="the labels to make, balanced (default: the set's own; sounds also has siren and drips)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a set already in --out (its manifest.jsonl and audio/ files of the same names)")


def _synth(args: argparse.Namespace) -> int:
    from ..synth import write_set

    out = Path(args.out)
    taken = [p for p in (out / "manifest.jsonl", out / "audio") if p.exists()]
    if taken and not args.overwrite:
        raise UsageError(f"--out {out} already holds a data set ({', '.join(str(p) for p in taken)}), left as it is: "
                         "choose another --out, or give --overwrite to replace it")
    labels = None if args.labels is None else [label.strip() for label in args.labels.split(",") if label.strip()]
    check_writable(out, "--out")
    try:
        manifest = write_set(args.kind, args.out, args.n, args.seed, args.duration, labels=labels)
    except ValueError as exc:  # checked before anything is written
        raise UsageError(str(exc)) from None
    print(f"wrote {args.n} {args.kind} clips ({args.duration:g} s, 16 kHz) and {manifest}")
    print(f"use it in a recipe: data: {{train: {{type: jsonl, manifest: {manifest}}}}}")
    return 0


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="run folder (default: the recipe's run_dir:, else runs/<recipe name>/); "
                                     "the cache goes to RUN_DIR/cache/, where train reads it")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) when any item is bad, not only when none is usable")
    p.add_argument("--workers", type=number(int, min=0), default=min(4, os.cpu_count() or 1),
                   help="processes decoding audio (default: up to 4; 0 decodes in this process)")
    p.add_argument("--no-cache", action="store_true", help="only check the data; build no mel cache")
    p.add_argument("--cache-shard-size", type=number(int, min=1), default=256, metavar="N",
                   help="clips to a cache shard file (default 256); under torchrun each process writes whole shards")


def _prepare(args: argparse.Namespace) -> int:
    import logging

    from ..data.prepare import prepare

    if not logging.getLogger("tta.data").handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    from .. import distributed

    recipe = load_recipe(args)
    part, _ = distributed.join("cpu")  # under torchrun: each process decodes its share (gloo: CPU work)
    try:
        prepare(recipe, load_plugins(args).registry, run_dir(args, recipe), workers=max(0, args.workers),
                strict=args.strict, cache=not args.no_cache, part=part, shard_size=args.cache_shard_size)
    except BaseException:
        distributed.leave(part, wait=False)
        raise
    distributed.leave(part)
    return 0


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new (or empty) folder: <split>-000000.tar, ... and index.json")
    p.add_argument("--shard-size", type=number(int, min=1), default=1000, metavar="N",
                   help="clips per shard (default 1000)")
    p.add_argument("--split", action="append", default=[], metavar="NAME",
                   help="only this split of the recipe's data: (repeatable; default every split)")
    p.add_argument("--with-mel", action="store_true", help="also store each clip's log-mel (<key>.mel.npy)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) when any item is bad, as prepare --strict")
    p.add_argument("--workers", type=number(int, min=0), default=min(4, os.cpu_count() or 1),
                   help="processes decoding audio while checking it (default: up to 4)")


def _shard(args: argparse.Namespace) -> int:
    import json
    import logging

    from ..data.prepare import build_splits, check_split
    from ..data.shards import write_split
    from ..errors import DataError
    from ..exporting import check_out, write_folder
    from ..progress import Progress

    if not logging.getLogger("tta.data").handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    recipe = load_recipe(args)
    out = check_out(args.out)
    check_writable(out, "--out")
    audio = recipe.audio
    splits = build_splits(recipe, load_plugins(args).registry, audio)
    unknown = [s for s in args.split if s not in splits]
    if unknown:
        raise UsageError(f"--split {', '.join(unknown)}: the recipe's data: has {', '.join(splits)}")
    chosen = {name: items for name, items in splits.items() if not args.split or name in args.split}
    checked = {}
    for name, items in chosen.items():  # prepare's rules, before anything is written
        report, usable = check_split(name, items, audio, None, max(0, args.workers))
        for line in report.lines():
            print(line)
        if not usable:
            raise DataError(f"nothing usable in {name}: every item was skipped (see the report above); nothing written")
        checked[name] = (report, usable)
    bad = sum(sum(r.skipped.values()) for r, _ in checked.values())
    if bad and (args.strict or audio.on_bad_item == "fail"):
        why = "--strict" if args.strict else "audio.on_bad_item is 'fail'"
        raise DataError(f"{bad} bad item(s) and {why}; fix or remove them (listed above); nothing written")

    def write(work: Path) -> dict:
        index = {"format": "webdataset", "members": ["flac", "json"] + (["mel.npy"] if args.with_mel else []),
                 "audio": audio.to_dict(), "recipe": recipe.name, "splits": {}}
        for name, (report, usable) in checked.items():
            with Progress(len(usable), f"shard {name}", "clips") as bar:
                written = write_split(name, usable, audio, work, args.shard_size, with_mel=args.with_mel,
                                      progress=bar.update)
            index["splits"][name] = {"items": written.items, "bytes": written.bytes, "shards": written.shards,
                                     "report": report.to_dict()}
        (work / "index.json").write_text(json.dumps(index, indent=2))
        return index

    index = write_folder(out, write)
    for name, split in index["splits"].items():
        print(f"{name}: {split['items']} clips in {len(split['shards'])} shard(s), {split['bytes'] / 1e6:.1f} MB: "
              f"{out}/{split['shards'][0]['file']}" + (f" ... {split['shards'][-1]['file']}"
                                                     if len(split['shards']) > 1 else ""))
    print(f"index: {out / 'index.json'}")
    return 0


COMMANDS = [
    Command("synth", "write a synthetic captioned dataset (sounds or birds) with a jsonl manifest", _synth,
            _synth_args),
    Verb("prepare", "check the recipe's datasets (report kept / skipped by reason) and build the mel cache", _prepare,
         _prepare_args),
    Verb("shard", "write the recipe's datasets as WebDataset tar shards (FLAC + JSON captions), checked as prepare "
         "checks them", _shard, _shard_args),
]
