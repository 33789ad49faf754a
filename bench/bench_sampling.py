"""Sampling loop overhead: seconds per step of the full guided sample loop vs the bare network.

    .venv/bin/python bench/bench_sampling.py [--steps 50] [--batch 4] [--guidance 3] [--device auto]

The floor is one forward of the tiny denoiser on the batch the loop feeds it (2B with
classifier-free guidance: both halves go through in one call). The ratio says how much the
loop (process maps, guidance, sampler update, noise draws) adds per step; near 1.0 means the
network dominates. Builds a tiny random conv denoiser on an AudioLDM-shaped latent; nothing
is downloaded. Numbers depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=64, help="channels of the tiny denoiser")
    parser.add_argument("--frames", type=int, default=64, help="latent frames (AudioLDM: 256 for 10.24 s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from tta_core.diffusion import DDIM, DDPM, Guidance, VDiffusion, VPDiscrete, VSampler, guided_denoiser
    from tta_core.interfaces import Conditioning

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)

    class TinyDenoiser(torch.nn.Module):
        def __init__(self, channels: int = 8, width: int = 64, cond: int = 32):
            super().__init__()
            self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
            self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
            self.out = torch.nn.Conv2d(width, channels, 3, padding=1)
            self.film = torch.nn.Linear(cond, width)
            self.time = torch.nn.Linear(1, width)

        def forward(self, x, t, c):
            h = self.inp(x) + (self.film(c.pooled) + self.time(t[:, None] / 1000))[:, :, None, None]
            return self.out(torch.nn.functional.silu(self.mid(torch.nn.functional.silu(h))))

    torch.manual_seed(0)
    net = TinyDenoiser(width=args.width).to(device).eval().requires_grad_(False)
    b = args.batch
    cond = Conditioning(pooled=torch.randn(b, 32, device=device))
    uncond = Conditioning(pooled=torch.zeros(b, 32, device=device))
    x_T = torch.randn(b, 8, args.frames, 16, device=device)
    guidance = Guidance(scale=args.guidance)
    fed = 2 * b if guidance.active else b

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def best(fn, n):
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) / n)
        return min(times)

    x_fed = torch.randn(fed, 8, args.frames, 16, device=device)
    t_fed = torch.full((fed,), 500.0, device=device)
    c_fed = Conditioning.cat([uncond, cond]) if guidance.active else cond
    with torch.no_grad():
        net(x_fed, t_fed, c_fed)  # warm-up

        def forwards():
            for _ in range(args.steps):
                net(x_fed, t_fed, c_fed)

        floor = best(forwards, args.steps)
    print(f"device {device}, batch {b} (network sees {fed}), latent {tuple(x_T.shape[1:])}, "
          f"{args.steps} steps, guidance {args.guidance:g}, torch threads {torch.get_num_threads()}")
    print(f"bare network forward: {floor * 1e3:.3f} ms")
    processes = {"vp_discrete": VPDiscrete(betas="scaled_linear", beta_start=0.0015, beta_end=0.0195, steps_offset=1),
                 "v_diffusion": VDiffusion()}
    samplers = {"ddim": DDIM(), "ddpm": DDPM(), "vsampler": VSampler()}
    for pname, process in processes.items():
        schedule = process.schedule(args.steps)
        denoise = guided_denoiser(process, net, cond, uncond, guidance)
        for sname, sampler in samplers.items():
            generator = torch.Generator("cpu").manual_seed(0)
            sampler(denoise, x_T, schedule, generator=generator)  # warm-up
            per_step = best(lambda: sampler(denoise, x_T, schedule, generator=generator), args.steps)
            print(f"  {pname:<12} {sname:<9} {per_step * 1e3:8.3f} ms/step   ratio to the floor {per_step / floor:5.2f}")


if __name__ == "__main__":
    main()
