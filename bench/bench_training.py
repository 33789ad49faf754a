"""Latent-diffusion training throughput: cached latents (and caption embeddings) against
encoding every batch through the frozen autoencoder (and text encoder), AudioLDM's way.

    .venv/bin/python bench/bench_training.py [--steps 30] [--batch 32] [--clips 256] [--device auto]
                                             [--vae quickstart audioldm-size]

Runs the quickstart recipe's ``ldm`` stage through ``tta-run ... train`` four times per
autoencoder size (the quickstart's tiny VAE, and one the size of AudioLDM's) on a synthetic
set, with mels from the prepared cache in every run, so the difference is the encoders:

- ``t5 trained``: the quickstart as it is (its T5 trains with the U-Net, so captions are
  encoded every step either way), with ``objective.cache`` false, then true;
- ``t5 frozen``: a tiny pretrained T5 folder written here, frozen, as AudioLDM-style recipes
  use one; cache false, then true (latents and caption embeddings cached).

Prints steps/s, samples/s and the cache-fill time of each run and the cached/uncached
speed-up. The first two steps of each run are left out of the rate (start-up). Nothing is
downloaded. Numbers depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


#: The quickstart's VAE (channels 16/32/64, 4 latent channels) and one the size of AudioLDM's
#: (128/256/512, 8 latent channels, 2 layers per block, mid-block attention).
VAES = {
    "quickstart": [],
    "audioldm-size": ["--set", "components.vae.channels=[128, 256, 512]", "--set", "components.vae.latent_channels=8",
                      "--set", "components.vae.layers_per_block=2", "--set", "components.vae.norm_groups=32",
                      "--set", "components.vae.mid_attention=true", "--set", "components.unet.in_channels=8"],
}


def tta(*args: str) -> str:
    cmd = [sys.executable, "-m", "tta_core.cli", *args]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def tiny_t5(folder: Path) -> None:
    """A random 2-layer T5 encoder and a word-level tokenizer, saved as a pretrained folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = sorted({w for line in (folder.parent / "data" / "manifest.jsonl").read_text().splitlines()
                    for w in json.loads(line)["caption"].replace(",", " ").split()})
    words += [f"w{i}" for i in range(200)]  # a vocabulary of a plausible size
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    config = T5Config(vocab_size=len(vocab), d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4)
    T5EncoderModel(config).save_pretrained(folder)


def rate(run_dir: Path, skip: int = 2) -> tuple[float, float]:
    """steps/s and samples/s between the log at step ``skip`` and the last one."""
    rows = [json.loads(line) for line in (run_dir / "ldm" / "logs" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "steps_per_s" in r]
    first, last = next(r for r in rows if r["step"] >= skip), rows[-1]
    # steps_per_s is cumulative from the start of the run: recover the elapsed times
    t_first, t_last = first["step"] / first["steps_per_s"], last["step"] / last["steps_per_s"]
    steps = last["step"] - first["step"]
    per_sample = last["samples_per_s"] / last["steps_per_s"]  # samples per step
    return steps / (t_last - t_first), steps * per_sample / (t_last - t_first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--vae", nargs="+", choices=list(VAES), default=list(VAES),
                        help="autoencoder sizes to run (default: both)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tta-bench-train-") as tmp:
        tmp = Path(tmp)
        tta("synth", "sounds", "--out", str(tmp / "data"), "--n", str(args.clips), "--seed", "0")
        common = ["--set", f"data.train.manifest={tmp / 'data' / 'manifest.jsonl'}",
                  "--set", f"train.ldm.batch_size={args.batch}", "--set", "train.ldm.log_every=1",
                  "--set", "train.ldm.checkpoint_every=100000", "--set", "train.ldm.ema=null"]
        tiny_t5(tmp / "t5")
        frozen_t5 = ["--set", f"components.text={{type: t5, pretrained: {tmp / 't5'}, max_length: 64}}",
                     "--set", "train.ldm.trains=[unet]", "--set", "train.ldm.frozen=[vae, text]"]
        recipe = "recipes/quickstart.yaml"
        print(f"latent diffusion training, quickstart U-Net, batch {args.batch}, {args.steps} steps per run")
        print(f"{'autoencoder':<18} {'text encoder':<12} {'cache':<6} {'steps/s':>8} {'samples/s':>10} "
              f"{'cache fill s':>13}")
        results = {}
        for vae, vae_sets in VAES.items():
            if vae not in args.vae:
                continue
            base = tmp / f"base-{vae}"
            sets = [*common, *vae_sets]
            tta(recipe, "prepare", "--run-dir", str(base), *sets)
            tta(recipe, "train", "--stage", "vae", "--max-steps", "1", "--run-dir", str(base), "--device",
                args.device, "--no-progress", *sets)
            for label, extra in (("t5 trained", []), ("t5 frozen", frozen_t5)):
                for cache in (False, True):
                    run = tmp / f"run-{vae}-{label.replace(' ', '-')}-{cache}"
                    shutil.copytree(base, run)
                    out = tta(recipe, "train", "--stage", "ldm", "--max-steps", str(args.steps), "--run-dir",
                              str(run), "--device", args.device, "--no-progress", *sets, *extra,
                              "--set", f"train.ldm.objective.cache={str(cache).lower()}")
                    fill = sum(float(s) for s in re.findall(r"cache \S+: .*\(([\d.]+) s\)", out))
                    steps_s, samples_s = rate(run)
                    results[vae, label, cache] = steps_s
                    print(f"{vae:<18} {label:<12} {str(cache).lower():<6} {steps_s:>8.2f} {samples_s:>10.1f} "
                          f"{fill if cache else 0:>13.1f}", flush=True)
                    shutil.rmtree(run)
        for vae, label, cache in results:
            if cache:
                speedup = results[vae, label, True] / results[vae, label, False]
                print(f"speed-up with caches ({vae} autoencoder, {label}): {speedup:.2f}x")


if __name__ == "__main__":
    main()
