"""``tta-run RECIPE train``: run the recipe's training stages in order (or one with --stage)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..precision import PRECISIONS
from .base import Verb, load_plugins, load_recipe, number, run_dir


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="run only this stage (repeatable); default: every stage in order")
    p.add_argument("--run-dir", default=None,
                   help="where stages keep checkpoints and logs (default: the recipe's run_dir:, "
                        "else runs/<recipe name>/)")
    p.add_argument("--max-steps", type=number(int, min=0), default=None,
                   help="cap each stage at this many steps (this invocation; 0 writes the starting weights as step 0)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or auto (default: cuda when available); under accelerate/torchrun "
                        "the launcher gives each process its device")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="override the stages' precision (auto: bf16 where the device computes it natively, else fp32)")
    p.add_argument("--seed", type=number(int, min=0), default=None, help="override the stages' seed")
    fresh = p.add_mutually_exclusive_group()
    fresh.add_argument("--resume", action="store_true", default=True,
                       help="continue from the run dir's latest checkpoint (the default)")
    fresh.add_argument("--fresh", action="store_true",
                       help="start the stages over. The old checkpoints stay in place until the new run's first "
                            "checkpoint is written, which then replaces them (they are deleted); a run that fails or "
                            "is stopped before that leaves them as they were, and a plain resume uses them")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start trained components from these weights (run dir, checkpoint folder or .safetensors)")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --init-from: load the weights that fit and list the missing/unexpected keys")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="train even when a step is estimated to need more memory than the device has free")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress report (a bar on a terminal, else a line every 10 s with the rate and time left)")


def _train(args: argparse.Namespace) -> int:
    import logging
    import time

    from ..errors import UsageError
    from ..training.engine import Trainer, check_device
    from ..training.stage import parse_stage

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_device(args.device)  # before the recipe and the plugins load
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
    for stage in stages:  # every stage's own example length is checked before any stage trains
        stage.audio_for(recipe.audio)
    folder = run_dir(args, recipe)
    selected = [s for s in stages if s.name in chosen]
    for i, stage in enumerate(selected):
        trainer = Trainer(recipe, registry, stage, folder, stage_order=names, device=args.device,
                          precision=args.precision, max_steps=args.max_steps, seed=args.seed, fresh=args.fresh,
                          init_from=args.init_from, allow_partial=args.allow_partial,
                          progress=not args.no_progress, memory_check=not args.skip_memory_check)
        started = time.perf_counter()
        result = trainer.run_stage()
        if result.signal and result.checkpoint is None:
            print(f"stage '{stage.name}': stopped by signal {result.signal} before training started; "
                  "nothing was changed", file=sys.stderr)
        else:
            print(f"stage '{stage.name}': step {result.step} ({time.perf_counter() - started:.0f} s), "
                  f"checkpoint {result.checkpoint}"
                  + (f", {result.nonfinite_skipped} non-finite steps skipped" if result.nonfinite_skipped else ""))
        if result.signal:
            print(f"stopped by signal {result.signal}; {_how_to_go_on(args, [s.name for s in selected], i, result)}",
                  file=sys.stderr)
            return result.exit_code
    return 0


def _how_to_go_on(args: argparse.Namespace, selected: list[str], i: int, result) -> str:
    """The command(s) that continue a run stopped by a signal in stage ``selected[i]``.

    Resuming is the default, so the same command continues a plain run. After --fresh the
    stopped stage must resume without it (else its new progress is thrown away again), the
    stages after it still start over, and the ones before it are done."""
    if not args.fresh:
        return f"resume with:\n  {_command(args, args.stage, fresh=False)}"
    current, later = selected[i], selected[i + 1:]
    if not result.wrote_checkpoint:  # the stage is as it was before this run
        stages = args.stage if i == 0 else selected[i:]
        return (f"the previous checkpoints of stage '{current}' are kept. To start over, run:\n  "
                f"{_command(args, stages, fresh=True)}")
    again = "without --fresh, which would start over again"
    if not later:
        return f"resume with ({again}):\n  {_command(args, args.stage if i == 0 else [current], fresh=False)}"
    return (f"resume stage '{current}' with ({again}):\n  {_command(args, [current], fresh=False)}\n"
            f"then start the stages after it over with:\n  {_command(args, later, fresh=True)}")


def _command(args: argparse.Namespace, stages: list[str], *, fresh: bool) -> str:
    """This command line as a user would type it, for the given stages, with or without --fresh."""
    words = ["tta-run", str(args.recipe_path), "train"]
    for name in stages:
        words += ["--stage", name]
    for override in args.overrides:
        words += ["--set", override]
    options = [("--run-dir", args.run_dir), ("--max-steps", args.max_steps), ("--device", args.device),
               ("--precision", args.precision), ("--seed", args.seed), ("--init-from", args.init_from)]
    for flag, value in options:
        if value is not None:
            words += [flag, str(value)]
    for flag, on in [("--allow-partial", args.allow_partial), ("--no-progress", args.no_progress),
                     ("--skip-memory-check", args.skip_memory_check),
                     ("--strict-plugins", args.strict_plugins), ("--debug", args.debug), ("--fresh", fresh)]:
        if on:
            words.append(flag)
    return shlex.join(words)


COMMANDS = [Verb("train", "train the recipe's stages in order, resuming from the run dir", _train, _args)]
