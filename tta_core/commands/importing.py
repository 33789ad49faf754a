"""``tta-run import FORMAT SOURCE... --out RUN_DIR``: weights trained elsewhere as a run
directory that ``sample`` and ``train`` use (see :mod:`tta_core.importing`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import Command, choose_format, load_plugins
from ..errors import UsageError


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", nargs="?", help="what the files are (`tta-run import` lists the formats)")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="the files or folders to import")
    p.add_argument("--out", metavar="RUN_DIR", help="the run directory to write (recipe.yaml and checkpoints)")
    p.add_argument("--recipe", default=None, help="the recipe the weights fit (default: the format's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="adjust the recipe to the model's sizes, e.g. --set components.unet.items=[1,2,2]; repeatable")
    p.add_argument("--force", action="store_true", help="replace RUN_DIR when it is not empty")


def _import(args: argparse.Namespace) -> int:
    from ..importing import write_run

    registry = load_plugins(args).registry
    if not choose_format(registry, "importer", args.format,
                         "tta-run import FORMAT SOURCE... --out RUN_DIR [--recipe R] [--set K=V]"):
        return 0
    if not args.sources:
        raise UsageError(f"import {args.format}: name the files or folders to import")
    if not args.out:
        raise UsageError("import: say where the run directory goes with --out RUN_DIR")
    importer = registry.get("importer", args.format).build()
    imported = importer([Path(s) for s in args.sources], out=Path(args.out).resolve(), recipe=args.recipe,
                        overrides=args.overrides, registry=registry)
    recipe_file = write_run(args.out, imported, registry=registry, fmt=args.format, force=args.force)
    for name, source in imported.sources.items():
        print(f"{name}: {source}" + (" + EMA" if name in imported.ema else ""))
    for note in imported.notes:
        print(f"note: {note}")
    print(f"wrote {args.out}; sample with: tta-run {recipe_file} sample --text \"...\"")
    return 0


COMMANDS = [Command("import", "bring weights trained elsewhere into a run directory", _import, _args)]
