"""What one latent-diffusion training step of the quickstart costs, and what its CPU levers buy.

    .venv/bin/python bench/bench_quickstart_step.py [--steps 6] [--batch 16]

Builds the quickstart recipe's U-Net and T5 (random weights) and times, on the CPU, in fp32:

- the optimizer step alone: AdamW's per-tensor loop (torch's default on a CPU) against the
  fused kernel the trainer uses;
- a whole step (text encoder, U-Net forward and backward, fused AdamW) with the recipe's
  ``patch_size`` against ``patch_size: 1`` (the U-Net on the full latent grid);

and prints seconds per step and the ratios. Numbers depend on the machine; compare runs on
the same one.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _build(overrides):
    from tta_core.discovery import get_registry
    from tta_core.recipe import build, load_recipe
    from tta_core.sampling import audio_config

    registry = get_registry()
    recipe = load_recipe(ROOT / "recipes/quickstart.yaml", overrides)
    audio = audio_config(recipe)
    comp = recipe.components
    torch.manual_seed(0)
    unet = build(comp["unet"], "denoiser", registry, audio=audio)
    text = build(comp["text"], "conditioner", registry, audio=audio)
    vae = build(comp["vae"], "autoencoder", registry, audio=audio)
    return unet, text, vae.latent_shape(audio.num_frames)


def _timed(fn, steps: int) -> float:
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    captions = ["a rising chirp", "a series of high beeps", "a plucked string", "white noise"]

    unet, text, latent = _build([])
    params = list(unet.parameters()) + list(text.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    loop = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    t_loop, t_fused = _timed(loop.step, args.steps), _timed(fused.step, args.steps)
    print(f"optimizer step, {len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.1f} M parameters")
    print(f"  AdamW per-tensor loop  {t_loop * 1000:8.1f} ms")
    print(f"  AdamW fused            {t_fused * 1000:8.1f} ms   ({t_loop / t_fused:.1f}x faster)")

    rows = {}
    for label, overrides in (("recipe", []), ("patch_size 1", ["components.unet.patch_size=1"])):
        unet, text, latent = _build(overrides)
        opt = torch.optim.AdamW(list(unet.parameters()) + list(text.parameters()), lr=1e-4, fused=True)
        prompts = (captions * args.batch)[: args.batch]

        def step():
            cond = text.encode_text(prompts)
            x = torch.randn(args.batch, *latent)
            t = torch.randint(0, 1000, (args.batch,))
            loss = (unet(x, t, cond) - x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        rows[label] = _timed(step, args.steps)
    print(f"training step, batch {args.batch}, latent {tuple(latent)}")
    for label, seconds in rows.items():
        print(f"  {label:<14} {seconds:6.3f} s/step")
    print(f"  patches speed the step up {rows['patch_size 1'] / rows['recipe']:.2f}x")


if __name__ == "__main__":
    main()
