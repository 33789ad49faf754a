"""The shipped recipes at their published sizes: for every training stage one real step at
batch 1, and one sampling step, each against the peak `tta-run RECIPE plan` estimated.

    .venv/bin/python bench/bench_real_size.py [--device cpu|cuda] [--recipes audioldm_t5 amphion_tta ...]

Components whose pretrained weights are not on this machine are built with random weights
(``random_weights: true``, as ``plan`` does); the data is a synthetic set of four clips at the
recipe's rate and length (``synth sounds``, or ``synth birds`` for a waveform recipe). Each
stage trains one step into a temporary run directory (the earlier stages' one-step
checkpoints give the later stages their frozen parts), then one clip is sampled with one
step.

Measured peak: on CUDA ``torch.cuda.max_memory_allocated`` over the step's command; on the
CPU the peak of live tensor bytes (``tta_core.memory.measured_bytes``) over the command.
Prints, per recipe and stage: the estimate, the measured peak, their ratio (within 0.7-1.3 is
the target) and the seconds the command took. Exits 1 when a ratio is outside that band.
Nothing is downloaded. On 2 CPU cores a real-size stage takes minutes; on a GPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_SIZE = ["audioldm_t5", "audioldm_clap", "amphion_tta", "diffae_birds"]


def measure(fn, device: str) -> tuple[int, float]:
    """(peak bytes, seconds) of ``fn()`` on ``device``."""
    import torch

    from tta_core.memory import measured_bytes

    start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, time.perf_counter() - start
    peak = measured_bytes(fn)
    return peak, time.perf_counter() - start


def run(argv: list[str]) -> None:
    from tta_core.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"failed ({code}): tta-run {' '.join(argv)}")


def bench(name: str, device: str, root: Path) -> list[tuple[str, int | None, int, float]]:
    from tta_core.discovery import get_registry
    from tta_core.planning import plan_recipe, random_weight_overrides
    from tta_core.recipe import load_recipe

    path = REPO / "recipes" / f"{name}.yaml"
    recipe = load_recipe(path)
    audio = recipe.audio
    kind = "birds" if recipe.get("data", {}).get("train", {}).get("manifest", "").find("birds") >= 0 else "sounds"
    data = root / "data"
    run(["synth", kind, "--out", str(data), "--n", "4", "--duration", str(audio.duration)])
    sets = [f"data.train={{type: jsonl, manifest: {data / 'manifest.jsonl'}}}",
            *random_weight_overrides(recipe, get_registry())]
    stages = [s["name"] for s in recipe.get("train")]
    for node in recipe.get("train"):
        sets += [f"train.{node['name']}.batch_size=1", f"train.{node['name']}.grad_accum=1"]
        if "disc_start" in node["objective"]:  # the one step takes the discriminator's part, as plan's does
            sets.append(f"train.{node['name']}.objective.disc_start=0")
    args = [x for s in sets for x in ("--set", s)] + ["--run-dir", str(root / "run"), "--no-progress"]
    planned = load_recipe(path, overrides=sets)
    plan = plan_recipe(planned, registry=get_registry(), device=device, measure=False)
    estimates = {s.name: s.estimated_peak_bytes for s in plan.stages}
    rows = []
    for stage in stages:
        peak, seconds = measure(lambda: run([str(path), "train", "--stage", stage, "--max-steps", "1",
                                             "--device", device, "--skip-memory-check", *args]), device)
        rows.append((stage, estimates.get(stage), peak, seconds, _skipped(root / "run" / stage)))
    batch = plan.sampling.batch_size if plan.sampling and plan.sampling.batch_size else 1
    peak, seconds = measure(lambda: run([str(path), "sample", "--text", "a dog barks", "--n", str(batch),
                                         "--steps", "1", "--device", device, "--skip-memory-check",
                                         "--out", str(root / "out"), *args]), device)  # one batch of the plan's size
    rows.append(("sample", plan.sampling.estimated_peak_bytes if plan.sampling else None, peak, seconds, 0))
    return rows


def _skipped(stage_dir: Path) -> int:
    """Steps the stage skipped for a non-finite loss (no optimizer state was made for them)."""
    import json

    log = stage_dir / "logs" / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return max((int(r.get("nonfinite_skipped", 0)) for r in rows), default=0)


def main() -> int:
    from tta_core.memory import format_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipes", nargs="+", default=REAL_SIZE)
    args = parser.parse_args()
    failed = False
    print(f"{'recipe':<15} {'stage':<8} {'estimate':>10} {'measured':>10} {'ratio':>6} {'seconds':>8}")
    for name in args.recipes:
        with tempfile.TemporaryDirectory() as tmp:
            for stage, estimate, peak, seconds, skipped in bench(name, args.device, Path(tmp)):
                ratio = estimate / peak if estimate and peak else float("nan")
                ok = 0.7 <= ratio <= 1.3
                failed |= not ok
                print(f"{name:<15} {stage:<8} {format_bytes(estimate) if estimate else '-':>10} "
                      f"{format_bytes(peak):>10} {ratio:>6.2f} {seconds:>8.1f}{'' if ok else '  outside 0.7-1.3'}"
                      f"{'  (the step was skipped: non-finite loss)' if skipped else ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
