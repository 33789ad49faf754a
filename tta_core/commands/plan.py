"""``tta-run RECIPE plan``: will it fit? Parameters, estimated peak memory and step time of every
training stage and of sampling, at the recipe's real sizes (tta_core.planning says how)."""

from __future__ import annotations

import argparse
import json

from ..precision import PRECISIONS
from .base import Verb, load_plugins, load_recipe, number


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="plan only this stage (repeatable); default: every stage, and sampling")
    p.add_argument("--batch-size", type=number(int, min=1), default=None,
                   help="plan the stages at this batch size instead of their own")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="plan in this precision instead of the stages' own (sampling: fp32 unless given)")
    p.add_argument("--device", default=None,
                   help="the device to plan for: cpu, cuda, cuda:N (default: cuda when this machine has it). "
                        "Without it here the CPU runs the steps in its place")
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="the memory of the target device, e.g. 24GB, 80GiB, 512MB: say whether each stage fits, "
                        "and the --set lines that make it fit")
    p.add_argument("--no-measure", action="store_true", help="do not time a step on this machine")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the report")


def _plan(args: argparse.Namespace) -> int:
    from ..planning import parse_memory, plan_recipe

    limit = parse_memory(args.memory) if args.memory is not None else None  # before anything loads
    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    plan = plan_recipe(recipe, registry=registry, stage=args.stage or None, batch_size=args.batch_size,
                       precision=args.precision, device=args.device, memory=limit, measure=not args.no_measure)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(report(plan))
    return 0


def _size(n: int | None) -> str:
    from ..memory import format_bytes

    return "?" if n is None else format_bytes(n)


def _count(n: int | None) -> str:
    if n is None:
        return "not built"
    return f"{n / 1e6:.1f} M params" if n >= 1e5 else f"{n:,} params"


def _components(items) -> list[str]:
    width = max([len(c.name) for c in items] + [4])
    types = max([len(c.type) for c in items] + [4])
    lines = [f"    {c.name:<{width}}  {c.type:<{types}}  {c.role:<7}  {_count(c.params):>16}  {_size(c.bytes):>8}"
             for c in items]
    random = [f"{c.name} ({c.note})" for c in items if c.random_weights and c.role != "ema"]
    if random:
        lines.append(f"    random weights: {', '.join(random)}")
    lines += [f"    {c.name}: {c.note}" for c in items if c.params is None]
    return lines


def _peak(part) -> list[str]:
    if part.estimated_peak_bytes is None:
        return []
    parts = " + ".join(f"{k} {_size(v)}" for k, v in part.breakdown.items())
    return [f"  estimated peak: {_size(part.estimated_peak_bytes)} ({parts})"]


def _fits(part, limit: int | None) -> list[str]:
    if part.fits is None:
        return []
    if part.fits:
        return [f"  fits in {_size(limit)}"]
    lines = [f"  does not fit in {_size(limit)}"]
    suggestions = getattr(part, "suggestions", [])
    if suggestions:
        lines.append("  to fit, add:  " + " ".join(suggestions))
    return lines


def report(plan) -> str:
    """The plan as the text ``tta-run RECIPE plan`` prints."""
    head = f"plan of {plan.recipe} for {plan.device}"
    if plan.measured_on != plan.device:
        head += f" (steps run on {plan.measured_on}, standing in for it)"
    lines = [head + "; memory figures are estimates"]
    for stage in plan.stages:
        accum = f", grad_accum {stage.grad_accum}" if stage.grad_accum > 1 else ""
        lines += ["", f"stage {stage.name}: batch {stage.batch_size}{accum}, {stage.duration:g} s examples, "
                      f"precision {stage.precision}", *_components(stage.components), *_peak(stage)]
        if stage.measured_step_seconds is not None:
            lines.append(f"  measured step: {stage.measured_step_seconds:.2f} s at batch {stage.measured_at_batch} "
                         f"on this machine ({plan.measured_on})")
        lines += _fits(stage, plan.memory_limit) + [f"  {note}" for note in stage.notes]
    sampling = plan.sampling
    if sampling is not None:
        what = (f"batch {sampling.batch_size}, {sampling.duration:g} s, {sampling.steps} steps, "
                if sampling.batch_size is not None else "")
        lines += ["", f"sampling: {what}precision {sampling.precision}", *_components(sampling.components),
                  *_peak(sampling)]
        if sampling.measured_step_seconds is not None:
            lines.append(f"  measured denoiser step: {sampling.measured_step_seconds:.3f} s at batch "
                         f"{sampling.measured_at_batch} on this machine ({plan.measured_on})")
        lines += _fits(sampling, plan.memory_limit) + [f"  {note}" for note in sampling.notes]
    return "\n".join(lines)


COMMANDS = [
    Verb("plan", "will it fit: parameters, estimated peak memory and step time of each stage and of sampling "
                 "(--memory 24GB: the settings that make it fit)", _plan, _args),
]
