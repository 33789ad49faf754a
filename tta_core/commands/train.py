"""``tta-run RECIPE train``: run the recipe's training stages in order (or one with --stage)."""

from __future__ import annotations

import argparse
import sys

from ..cli import load_plugins, load_recipe, verb


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="run only this stage (repeatable); default: every stage in order")
    p.add_argument("--run-dir", default=None, help="where stages keep checkpoints and logs (default runs/<recipe name>/)")
    p.add_argument("--max-steps", type=int, default=None, help="cap each stage at this many steps (this invocation)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: cuda when available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="override the stages' precision (auto: bf16 where the device computes it natively, else fp32)")
    p.add_argument("--seed", type=int, default=None, help="override the stages' seed")
    fresh = p.add_mutually_exclusive_group()
    fresh.add_argument("--resume", action="store_true", default=True,
                       help="continue from the run dir's latest checkpoint (the default)")
    fresh.add_argument("--fresh", action="store_true", help="delete the stage's checkpoints and start over")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start trained components from these weights (run dir, checkpoint folder or .safetensors)")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --init-from: load the weights that fit and list the missing/unexpected keys")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@verb("train", "train the recipe's stages in order, resuming from the run dir", _args)
def _train(args: argparse.Namespace) -> int:
    import logging
    import time

    from ..data.config import AudioConfig
    from ..errors import UsageError
    from ..runs import default_run_dir
    from ..training.engine import Trainer
    from ..training.stage import parse_stage

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    stages = [parse_stage(s) for s in (recipe.get("train") or [])]
    if not stages:
        raise UsageError(f"{recipe.path} has no train: stages")
    names = [s.name for s in stages]
    chosen = args.stage or names
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise UsageError(f"no stage named {', '.join(map(repr, unknown))}; stages: {', '.join(names)}")
    audio = AudioConfig.from_mapping(recipe.get("audio"))
    for stage in stages:  # every stage's own example length is checked before any stage trains
        stage.audio_for(audio)
    run_dir = args.run_dir or default_run_dir(recipe)
    for stage in stages:
        if stage.name not in chosen:
            continue
        trainer = Trainer(recipe, registry, stage, run_dir, stage_order=names, device=args.device,
                          precision=args.precision, max_steps=args.max_steps, seed=args.seed, fresh=args.fresh,
                          init_from=args.init_from, allow_partial=args.allow_partial,
                          progress=not args.no_progress and sys.stderr.isatty())
        started = time.perf_counter()
        result = trainer.run_stage()
        print(f"stage '{stage.name}': step {result.step} ({time.perf_counter() - started:.0f} s), "
              f"checkpoint {result.checkpoint}"
              + (f", {result.nonfinite_skipped} non-finite steps skipped" if result.nonfinite_skipped else ""))
        if result.signal:
            print(f"stopped by signal {result.signal}; resume with the same command", file=sys.stderr)
            return result.exit_code
    return 0
