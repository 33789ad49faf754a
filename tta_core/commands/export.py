"""``tta-run export FORMAT RUN_DIR --out DIR``: a run's models in another framework's layout
(see :mod:`tta_core.exporting`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import Command, check_writable, choose_format, load_plugins
from ..errors import UsageError


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", nargs="?", help="what to write (`tta-run export` lists the formats)")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run directory whose models to export")
    p.add_argument("--out", metavar="DIR", help="the folder to write; it must not exist yet, or be empty")
    p.add_argument("--recipe", default=None,
                   help="the run's recipe (default: RUN_DIR/recipe.yaml, else its stages' recipe.resolved.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value (YAML-typed); repeatable")
    p.add_argument("--ckpt", default=None, metavar="DIR", help="a checkpoint folder to take weights from first")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA copy")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:SCALE]",
                   help="an adapter to merge into the weights, as `sample --adapter` applies it; repeatable. "
                        "The run's own adapters are merged without it")


def _export(args: argparse.Namespace) -> int:
    from ..exporting import check_out, export_pipeline, refusal, run_recipe
    from ..recipe import check, load_recipe

    registry = load_plugins(args).registry
    if not choose_format(registry, "exporter", args.format, "tta-run export FORMAT RUN_DIR --out DIR [--recipe R]"):
        return 0
    if not args.run_dir:
        raise UsageError(f"export {args.format}: name the run directory to export")
    run = Path(args.run_dir)
    if not run.is_dir():
        raise UsageError(f"{run} is not a run directory (not a folder)")
    if not args.out:
        raise UsageError("export: say where the files go with --out DIR")
    out = check_out(args.out)
    check_writable(out, "--out")
    recipe_path = Path(args.recipe) if args.recipe else run_recipe(run)
    recipe = load_recipe(recipe_path, args.overrides)
    check(recipe, registry)
    exporter = registry.get("exporter", args.format).build()
    problems = exporter.check(recipe, registry=registry)  # before any weights load
    if problems:
        raise refusal(args.format, str(run), problems)
    from ..sampling.pipeline import load_pipeline

    options = {"adapters": args.adapter} if args.adapter else {}
    pipeline = load_pipeline(recipe, run_dir=run, ckpt=args.ckpt, ema=not args.no_ema, device="cpu",
                             registry=registry, **options)
    notes = export_pipeline(exporter, pipeline, out, fmt=args.format, what=str(run))
    print(f"recipe: {recipe_path}")
    for name, loaded in pipeline.weights.items():
        if loaded.source != "none":  # a process, Griffin-Lim: no weights to name
            print(f"{name}: {loaded.describe()}")
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


COMMANDS = [Command("export", "write a run's models in another framework's layout (e.g. a diffusers pipeline)",
                    _export, _args)]
