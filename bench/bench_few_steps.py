"""Few steps on the trained quickstart: DPM-Solver++ (2M) at 20 steps against DDIM at 200.

    .venv/bin/python bench/bench_few_steps.py [--run runs/quickstart] [--seeds 0 1 2] [--n-per-label 8]

Needs the run `make demo` trains. For each sampling seed and each sampler setting (DDIM 200
steps, the reference; DPM-Solver++ 2M at 20 steps; DDIM at 20 steps, the control), the
quickstart's eight labels are sampled ``--n-per-label`` times each by ``eval --adherence``
(its classifier, fitted on real clips, scores them), and the same clips are compared with
the real set by the Fréchet distance of their mel statistics (``eval --generated ...
--reference data/sounds``, the ``mel_stats`` embedder): two measures, one of them not
the project's own classifier. Printed: per setting, the mean and the spread over seeds of
both, and the seconds of sampling.

``dpmpp_2m`` comes from the example plugin ``examples/tta-fast-samplers`` (registered here
as an installed copy would be). "As good, within noise": the 20-step mean adherence is no
lower than the reference's by more than the reference's spread over seeds (max - min; at
least one clip in the label set), and its mean FD no higher by more than that spread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [("ddim", 200), ("dpmpp_2m", 20), ("ddim", 20)]


def _register_fast_samplers() -> None:
    from tta_core.discovery import get_plugins
    from tta_core.registry import Entry, Origin

    sys.path.insert(0, str(REPO / "examples" / "tta-fast-samplers" / "src"))
    registry = get_plugins().registry
    if not registry.has("sampler", "dpmpp_2m"):
        registry.add(Entry("sampler", "dpmpp_2m", "tta_fast_samplers.samplers:DPMSolverPP2M",
                           Origin("fast_samplers", "tta-fast-samplers (examples/)")))


def _cli(argv: list[str]) -> None:
    from tta_core.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"tta-run {' '.join(argv)} failed ({code})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=REPO / "runs" / "quickstart")
    p.add_argument("--reference", type=Path, default=REPO / "data" / "sounds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-per-label", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="where the clips go (default: RUN/few_steps)")
    args = p.parse_args()
    if not (args.run / "ldm" / "checkpoints").is_dir():  # `make bench` on a fresh clone
        print(f"skipped: {args.run} has no trained quickstart; run `make demo` first", file=sys.stderr)
        return
    _register_fast_samplers()
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    out = args.out or args.run / "few_steps"
    rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {s: [] for s in SETTINGS}
    for seed in args.seeds:
        for sampler, steps in SETTINGS:
            folder = out / f"{sampler}-{steps}-seed{seed}"
            start = time.perf_counter()
            _cli([recipe, "eval", "--adherence", "--run-dir", str(args.run), "--n-per-label", str(args.n_per_label),
                  "--seed", str(seed), "--steps", str(steps), "--sampler", sampler, "--out", str(folder)])
            seconds = time.perf_counter() - start
            adherence = json.loads((folder / "eval.json").read_text())["adherence"]["overall"]
            _cli(["eval", "--generated", str(folder), "--reference", str(args.reference), "--metrics", "fd",
                  "--out", str(folder / "fd")])
            fd = json.loads((folder / "fd" / "eval.json").read_text())["metrics"]["fd"]
            rows[(sampler, steps)].append((adherence, fd, seconds))
            print(f"seed {seed}  {sampler:<9}{steps:>4} steps  adherence {adherence:.3f}  FD {fd:7.3f}  "
                  f"({seconds:.0f} s)", flush=True)

    def summary(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), max(values) - min(values)

    ref_adh, ref_fd = (summary([r[i] for r in rows[SETTINGS[0]]]) for i in (0, 1))
    print(f"\n{'sampler':<10}{'steps':>6}{'adherence':>11}{'(spread)':>10}{'FD':>9}{'(spread)':>10}"
          f"{'s/seed':>8}  as good as the reference, within its noise")
    for (sampler, steps), rs in rows.items():
        (adh, adh_spread), (fd, fd_spread) = summary([r[0] for r in rs]), summary([r[1] for r in rs])
        seconds = statistics.mean(r[2] for r in rs)
        within = adh >= ref_adh[0] - max(ref_adh[1], 1 / (8 * args.n_per_label)) and fd <= ref_fd[0] + ref_fd[1]
        print(f"{sampler:<10}{steps:>6}{adh:>11.3f}{adh_spread:>10.3f}{fd:>9.3f}{fd_spread:>10.3f}{seconds:>8.0f}  "
              f"{'reference' if (sampler, steps) == SETTINGS[0] else ('yes' if within else 'no')}")


if __name__ == "__main__":
    main()
