"""The bars of `make finetune-demo`: prompt adherence per label before and after fine-tuning,
and the adapter's size against the network it adapts.

    python scripts/finetune_check.py --before BEFORE/eval.json --after AFTER/eval.json \
        --new siren,drips --run runs/quickstart_lora [--min-new 0.8] [--max-drop 0.05]

Prints one line per label (before, after, change) and the adapter's size; exits 1 when a new
label scores under ``--min-new`` or an old one drops more than ``--max-drop``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _per_label(path: Path) -> dict[str, float]:
    return dict(json.loads(path.read_text())["adherence"]["per_label"])


def adapter_sizes(run: Path) -> list[tuple[str, int, int]]:
    """(component, adapter bytes, bytes of the weights it adapts) for each adapter of the run's
    latest adapter checkpoints."""
    from tta_core.adapters import ADAPTER_SUFFIX
    from tta_core.checkpoint import latest_checkpoint

    rows = []
    for stage in sorted(p for p in run.iterdir() if (p / "checkpoints").is_dir()):
        ckpt = latest_checkpoint(stage / "checkpoints")
        if ckpt is None:
            continue
        for file in sorted(ckpt.path.glob(f"*.{ADAPTER_SUFFIX}.safetensors")):
            component = file.name[: -len(f".{ADAPTER_SUFFIX}.safetensors")]
            base = run / "weights" / f"{component}.safetensors"
            rows.append((component, file.stat().st_size, base.stat().st_size if base.is_file() else 0))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--new", required=True, help="the labels the fine-tune adds (comma-separated)")
    p.add_argument("--run", type=Path, required=True, help="the fine-tuned run folder")
    p.add_argument("--min-new", type=float, default=0.8)
    p.add_argument("--max-drop", type=float, default=0.05)
    p.add_argument("--max-size", type=float, default=0.05, help="the denoiser adapter's bytes / the denoiser's bytes")
    p.add_argument("--denoiser", default="unet", help="the component whose adapter --max-size bounds")
    args = p.parse_args(argv)

    before, after = _per_label(args.before), _per_label(args.after)
    new = [x.strip() for x in args.new.split(",") if x.strip()]
    failures = []
    print(f"{'label':<16}{'before':>8}{'after':>8}{'change':>8}")
    for label in sorted(after, key=lambda x: (x in new, x)):
        b, a = before.get(label), after[label]
        change = "" if b is None else f"{a - b:+8.2f}"
        print(f"{label:<16}{'' if b is None else f'{b:8.2f}':>8}{a:8.2f}{change}{'  (new)' if label in new else ''}")
        if label in new and a < args.min_new:
            failures.append(f"new label {label}: {a:.2f} < {args.min_new}")
        if label not in new and b is not None and a < b - args.max_drop - 1e-9:
            failures.append(f"old label {label}: {b:.2f} -> {a:.2f}, more than {args.max_drop} lower")
    missing = [x for x in new if x not in after]
    failures += [f"new label {x}: not scored" for x in missing]
    for component, size, base in adapter_sizes(args.run):
        ratio = size / base if base else float("nan")
        print(f"adapter on {component}: {size / 1e6:.2f} MB, {ratio:.1%} of its {base / 1e6:.2f} MB of weights")
        if component == args.denoiser and not ratio <= args.max_size:
            failures.append(f"adapter on {component}: {ratio:.1%} of its weights, over {args.max_size:.0%}")
    if failures:
        print("finetune-demo: FAILED\n  " + "\n  ".join(failures))
        return 1
    print(f"finetune-demo: passed (new labels >= {args.min_new}, old labels within {args.max_drop})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
