"""The README's "Will it fit?" table: `tta-run RECIPE plan --device cuda --memory M` for every
shipped real-size recipe at 24, 48 and 80 GB, as one markdown table.

    .venv/bin/python bench/fit_table.py [--recipes audioldm_t5 ...] [--memory 24GB 48GB 80GB] [--batch-size 32]

Per stage (and sampling): the batch and precision the recipe trains at, the estimated peak,
and per card size "fits", the `--set` lines that make it fit, or "no" with the least the stage
can need. Components whose pretrained weights are not on this machine are built with random
weights, as plan builds them; nothing is downloaded. Needs no GPU: the estimate is made on
fake tensors (minutes per recipe on 2 CPU cores, most of it building the networks).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_SIZE = ["audioldm_t5", "audioldm_clap", "amphion_tta", "diffae_birds"]


def _cell(part) -> str:
    if part.estimated_peak_bytes is None:
        return "not estimated"
    if part.fits:
        return "fits"
    sets = [s.removeprefix("--set ") for s in getattr(part, "suggestions", [])]
    if sets:
        return "<br>".join(f"`{s}`" for s in sets)
    least = next((n for n in part.notes if n.startswith("no combination")), "")
    return "no" + (f" ({least.split('about ')[-1].split(' (')[0]} at least)" if "about " in least else "")


def main() -> int:
    from tta_core.discovery import get_registry
    from tta_core.memory import format_bytes
    from tta_core.planning import plan_limits
    from tta_core.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=REAL_SIZE)
    parser.add_argument("--memory", nargs="+", default=["24GB", "48GB", "80GB"])
    parser.add_argument("--batch-size", type=int, default=None, help="every stage at this batch (plan --batch-size)")
    args = parser.parse_args()
    os.chdir(REPO)
    print("| recipe | stage | batch | precision | estimated peak | " + " | ".join(args.memory) + " |")
    print("|---|---|---|---|---|" + "---|" * len(args.memory))
    for name in args.recipes:
        recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
        plans = plan_limits(recipe, registry=get_registry(), limits=args.memory, device="cuda", measure=False,
                            batch_size=args.batch_size)
        rows = [(s.name, [p.stages[i] for p in plans]) for i, s in enumerate(plans[0].stages)]
        rows.append(("sample", [p.sampling for p in plans]))
        for stage, parts in rows:
            first = parts[0]
            peak = format_bytes(first.estimated_peak_bytes) if first.estimated_peak_bytes else "-"
            print(f"| {name} | {stage} | {first.batch_size} | {first.precision} | {peak} | "
                  + " | ".join(_cell(p) for p in parts) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
