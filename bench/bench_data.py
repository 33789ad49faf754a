"""Data-layer throughput: items/s for raw loading, on-the-fly mel, and the mel cache cold/warm.

    .venv/bin/python bench/bench_data.py [--n 256] [--duration 2.0] [--workers 2]

Writes a synthetic `sounds` set into a temporary folder (nothing downloaded), then times one
pass over it per configuration. Numbers depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _pass(loader) -> int:
    n = 0
    for batch in loader:
        n += 0 if batch is None else len(batch["id"])
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the main process (default: torch's choice); on a busy "
                             "2-core machine, 1 avoids threads spinning against each other")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from tta_core.data.cache import mel_cache
    from tta_core.data.config import AudioConfig
    from tta_core.data.dataset import AudioTextDataset, make_loader
    from tta_core.data.mel import LogMel
    from tta_core.data.prepare import check_split
    from tta_core.synth import write_set
    from tta_datasets.readers import jsonl

    audio = AudioConfig(duration=args.duration)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = write_set("sounds", Path(tmp) / "set", args.n, seed=0, duration=args.duration)
        print(f"synth sounds: {args.n} clips of {args.duration:g} s in {time.perf_counter() - t0:.2f} s "
              f"({args.n / (time.perf_counter() - t0):.0f} clips/s)")
        items = jsonl(str(manifest))
        rows = []

        def timed(name, fn):
            start = time.perf_counter()
            count = fn()
            rows.append((name, count / (time.perf_counter() - start)))

        for w in sorted({0, args.workers}):
            ds = AudioTextDataset(items, audio, train=True, mel=False, wave=True)
            timed(f"raw load (wave only), {w} workers", lambda: _pass(make_loader(ds, args.batch, workers=w)))
        for w in sorted({0, args.workers}):
            ds = AudioTextDataset(items, audio, train=True)
            timed(f"load + mel per item, {w} workers", lambda: _pass(make_loader(ds, args.batch, workers=w)))

        mel = LogMel(audio)
        ds = AudioTextDataset(items, audio, train=True, mel=False, wave=True)

        def batched():
            n = 0
            for batch in make_loader(ds, args.batch, workers=args.workers):
                n += mel(batch["wave"]).shape[0]
            return n

        timed(f"load + batched mel ({args.batch}/batch), {args.workers} workers", batched)
        cache = mel_cache(Path(tmp) / "cache", audio)
        timed(f"mel cache cold (prepare), {args.workers} workers",
              lambda: check_split("train", items, audio, cache, args.workers)[0].kept)
        warm = mel_cache(Path(tmp) / "cache", audio)
        for w in sorted({0, args.workers}):
            ds = AudioTextDataset(items, audio, train=True, cache=warm)
            timed(f"mel cache warm, {w} workers", lambda: _pass(make_loader(ds, args.batch, workers=w)))

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} main-process threads, "
          f"{args.n} items, batch {args.batch}")
    width = max(len(name) for name, _ in rows)
    for name, rate in rows:
        print(f"  {name:<{width}}  {rate:8.0f} items/s")


if __name__ == "__main__":
    main()
