"""`tta-run sample` against diffusers' AudioLDMPipeline on the same weights: whole processes,
alternating A B A B in one run, the output asserted equal.

    .venv/bin/python bench/bench_vs_diffusers.py [--steps 10 50] [--durations 5.12 10.24] [--repeats 2]
                                                [--size s|tiny] [--work DIR]

Random weights at AudioLDM-S's size (U-Net 128-256-384-640 with CLAP-projection FiLM, VAE
128-256-512 with 8 latent channels, a CLAP-sized RoBERTa text tower, AudioLDM's 16 kHz
HiFi-GAN) are saved as a diffusers folder and imported with `tta-run import
audioldm-diffusers`. Then, for each step count and duration, the two commands run as fresh
processes in turn, ``--repeats`` times each:

- A: ``tta-run RUN/recipe.yaml sample --text ... --seed 0 --steps S --guidance 2.5 --duration D``
- B: ``AudioLDMPipeline.from_pretrained(FOLDER)(prompt, num_inference_steps=S, guidance_scale=2.5,
  audio_length_in_s=D, generator=torch.Generator("cpu").manual_seed(0))``

Printed per case: the median wall time of each (from spawning the process to its exit), the
ratio tta / diffusers, the peak RSS of each process, and a per-phase split: process start
(spawn to the first line of Python), imports, model build, weight file reads, text encoding,
the sampling loop, VAE decode and vocoder. The two outputs must agree to 1e-4 of the peak.
Then, in one process, the sampling loop's seconds per step against the bare U-Net forward on
exactly the inputs the loop gave it (both guidance halves in one batch), and `tta-run --help` /
`tta-run plugins` against ``python -c "import torch"``.

The first `tta-run sample` of a run at a new shape estimates its memory on fake tensors (about
4 s at this size) and keeps the estimate in the run's cache: with the default 3 repeats the
median is a run that reads it, as every later call of a user does; the slowest tta run shows
the first. On 2 CPU cores the default run (S size, 10 and 50 steps, 5.12 s and 10.24 s)
takes about 35 minutes; ``--size tiny --steps 10 --durations 1.28`` checks the harness in two.
Nothing is downloaded: the tokenizer is a byte-level RoBERTa written here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a dog barking in the rain"
GUIDANCE = 2.5
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}


# -- the weights --------------------------------------------------------------------------------

def build_pipeline(folder: Path, size: str) -> None:
    """A random AudioLDMPipeline saved to ``folder`` (AudioLDM-S's size, or a tiny one)."""
    import torch
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    sys.path.insert(0, str(REPO / "tests"))
    from test_audioldm_import import byte_roberta_tokenizer

    torch.manual_seed(0)
    if size == "s":
        widths, vae_widths, latent, hidden, layers, heads, inter, upsample = (
            [128, 256, 384, 640], [128, 256, 512], 8, 768, 12, 12, 3072, 1024)
    else:
        widths, vae_widths, latent, hidden, layers, heads, inter, upsample = (
            [32, 64, 96, 160], [32, 64, 128], 8, 64, 2, 4, 128, 64)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=latent, out_channels=latent, block_out_channels=widths,
        layers_per_block=2, down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
        up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"], cross_attention_dim=widths,
        attention_head_dim=[max(1, w // 32) for w in widths], resnet_time_scale_shift="scale_shift",
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=512 if size == "s" else 32,
        class_embeddings_concat=True, flip_sin_to_cos=True, freq_shift=0)
    vae = AutoencoderKL(block_out_channels=vae_widths, in_channels=1, out_channels=1, latent_channels=latent,
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        layers_per_block=2, scaling_factor=0.9)
    text = ClapTextModelWithProjection(ClapTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=hidden, intermediate_size=inter,
        num_attention_heads=heads, num_hidden_layers=layers, vocab_size=50265 if size == "s" else 300,
        projection_dim=512 if size == "s" else 32, max_position_embeddings=514, layer_norm_eps=1e-5))
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=upsample, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False))
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text, tokenizer=byte_roberta_tokenizer(folder / "_tok"),
                            unet=unet, scheduler=scheduler, vocoder=vocoder)
    pipe.save_pretrained(folder / "pipe")


# -- the measured processes ---------------------------------------------------------------------

class Phases:
    """Seconds per named phase, from wrappers put on the functions that do each part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return wrapper


def _time_file_reads(phases: Phases) -> None:
    import safetensors.torch as st  # before diffusers / transformers bind load_file by name

    st.load_file = phases.timed("load", st.load_file)


def child_tta(args: list[str], out: Path, t_first: float) -> None:
    phases = Phases()
    t_import = time.time()
    _time_file_reads(phases)
    from tta_core.cli import main
    from tta_core.sampling import pipeline as P

    original_load = P.load_pipeline

    def load(*a, **k):
        t = time.perf_counter()
        pipe = original_load(*a, **k)
        phases.seconds["build"] = time.perf_counter() - t - phases.seconds.get("load", 0.0)
        pipe.conditioner.encode_text = phases.timed("text", pipe.conditioner.encode_text)
        pipe.autoencoder.decode = phases.timed("decode", pipe.autoencoder.decode)
        pipe.vocoder.forward = phases.timed("vocoder", pipe.vocoder.forward)
        return pipe

    P.load_pipeline = load
    import tta_core.sampling as S
    S.load_pipeline = load
    P.Pipeline._sample = phases.timed("loop", P.Pipeline._sample)
    imports = time.time() - t_import
    code = main(args)
    (out / "phases.json").write_text(json.dumps({"start": t_first, "import": imports, **phases.seconds, "rc": code}))
    sys.exit(code)


def child_diffusers(folder: str, steps: int, duration: float, out: Path, t_first: float) -> None:
    phases = Phases()
    t = time.time()
    _time_file_reads(phases)
    import numpy as np
    import torch
    from diffusers import AudioLDMPipeline
    imports = time.time() - t
    t = time.perf_counter()
    pipe = AudioLDMPipeline.from_pretrained(folder)
    phases.seconds["build"] = time.perf_counter() - t - phases.seconds.get("load", 0.0)
    pipe._encode_prompt = phases.timed("text", pipe._encode_prompt)
    pipe.decode_latents = phases.timed("decode", pipe.decode_latents)
    pipe.mel_spectrogram_to_waveform = phases.timed("vocoder", pipe.mel_spectrogram_to_waveform)
    t = time.perf_counter()
    audio = pipe(PROMPT, audio_length_in_s=duration, num_inference_steps=steps, guidance_scale=GUIDANCE,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="np").audios[0]
    call = time.perf_counter() - t
    phases.seconds["loop"] = call - sum(phases.seconds.get(k, 0.0) for k in ("text", "decode", "vocoder"))
    np.save(out / "audio.npy", audio)
    (out / "phases.json").write_text(json.dumps({"start": t_first, "import": imports, **phases.seconds, "rc": 0}))


def child_bare(run: str, steps: int, duration: float, out: Path) -> None:
    """The sampling loop's seconds per step against the bare U-Net forward, in one process.

    Three times in turn: the pipeline samples ``steps`` steps (guidance on, both halves in one batch)
    while every network call is timed and its inputs kept; then the bare network runs again on
    exactly those inputs. A loop step is the time between two step callbacks; the first step of
    each call (from the call's start: the prompt's encoding and the first network call at a
    shape) is reported apart."""
    import torch

    from tta_core.sampling import load_pipeline

    pipe = load_pipeline(Path(run) / "recipe.yaml", device="cpu")
    net, forward = pipe.denoiser, pipe.denoiser.forward
    calls: list[tuple[float, tuple]] = []

    def timed_forward(*a, **k):
        start = time.perf_counter()
        result = forward(*a, **k)
        calls.append((time.perf_counter() - start, a))
        return result

    loop_steps, in_net, bare, first = [], [], [], []
    for _ in range(3):
        calls.clear()
        stamps = [time.perf_counter()]
        net.forward = timed_forward
        try:
            pipe.generate([PROMPT], steps=steps, guidance=GUIDANCE, duration=duration, seed=0,
                          progress=lambda *_: stamps.append(time.perf_counter()))
        finally:
            net.forward = forward
        intervals = [b - a for a, b in zip(stamps, stamps[1:])]
        first.append(intervals[0])
        loop_steps += intervals[1:]
        in_net += [c[0] for c in calls[1:]]
        with torch.no_grad():
            for _, inputs in calls[1:]:
                start = time.perf_counter()
                net(*inputs)
                bare.append(time.perf_counter() - start)
    own = [s - n for s, n in zip(loop_steps, in_net)]
    (out / "bare.json").write_text(json.dumps({
        "loop": statistics.median(loop_steps), "bare": statistics.median(bare),
        "own": statistics.median(own), "first": statistics.median(first)}))


# -- the parent ---------------------------------------------------------------------------------

def spawn(argv: list[str], out: Path) -> dict:
    """Run one child; its wall time, peak RSS and phases."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *argv, "--child-out", str(out)], env=ENV,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    log = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[0]} failed ({proc.returncode}):\n{log[-3000:]}")
    phases = json.loads((out / "phases.json").read_text()) if (out / "phases.json").exists() else {}
    if "start" in phases:
        phases["start"] -= start
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "phases": phases}


def tta_args(run: Path, steps: int, duration: float, out: Path) -> list[str]:
    return ["tta", str(run / "recipe.yaml"), "sample", "--text", PROMPT, "--seed", "0", "--steps", str(steps),
            "--guidance", str(GUIDANCE), "--duration", str(duration), "--format", "float", "--out", str(out),
            "--no-progress"]


def tta_output(out: Path):
    import numpy as np
    import soundfile

    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    audio, _ = soundfile.read(out / row["file"], dtype="float32")
    return np.asarray(audio)


PHASES = ("start", "import", "build", "load", "text", "loop", "decode", "vocoder")


def median_phases(results: list[dict]) -> dict[str, float]:
    keys = [k for k in PHASES if any(k in r["phases"] for r in results)]
    med = {k: statistics.median(r["phases"].get(k, 0.0) for r in results) for k in keys}
    med["other"] = statistics.median(r["wall"] for r in results) - sum(med.values())
    return med


def startup(repeats: int) -> None:
    """`tta-run --help` and `tta-run plugins` against `python -c "import torch"`."""
    cmds = {"import torch": [sys.executable, "-c", "import torch"],
            "tta-run --help": [sys.executable, "-m", "tta_core.cli", "--help"],
            "tta-run plugins": [sys.executable, "-m", "tta_core.cli", "plugins"]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, env=ENV, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["import torch"])
    print(f"\nstart-up (median of {repeats}):")
    for name, ts in times.items():
        print(f"  {name:<16}{statistics.median(ts):7.2f} s  {statistics.median(ts) / ref:5.2f}x import torch")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        t_first = time.time()
        kind, rest, out = sys.argv[2], sys.argv[3:-2], Path(sys.argv[-1])
        if kind == "tta":
            child_tta(rest, out, t_first)
        elif kind == "diffusers":
            child_diffusers(rest[0], int(rest[1]), float(rest[2]), out, t_first)
        else:
            child_bare(rest[0], int(rest[1]), float(rest[2]), out)
        return

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    p.add_argument("--durations", type=float, nargs="+", default=[5.12, 10.24])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", choices=["s", "tiny"], default="s")
    p.add_argument("--work", type=Path, help="keep the weights and outputs here (default: a temporary folder)")
    args = p.parse_args()

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        folder, run = work / "diffusers", work / "run"
        if not (folder / "pipe" / "model_index.json").exists():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
                            f"import bench_vs_diffusers as b; from pathlib import Path; "
                            f"b.build_pipeline(Path({str(folder)!r}), {args.size!r})"], env=ENV, check=True)
            print(f"random AudioLDM-{args.size.upper()} pipeline saved in {time.perf_counter() - t:.0f} s")
        if not (run / "recipe.yaml").exists():
            subprocess.run([sys.executable, "-m", "tta_core.cli", "import", "audioldm-diffusers", str(folder / "pipe"),
                            "--out", str(run)], env=ENV, check=True, stdout=subprocess.DEVNULL)
        print(f"{'case':<18}{'tta s':>8}{'diffusers s':>13}{'ratio':>7}{'tta MB':>8}{'diff MB':>9}  max |diff| / peak")
        splits = []
        for duration in args.durations:
            for steps in args.steps:
                a, b = [], []
                for r in range(args.repeats):
                    out_a, out_b = work / f"tta-{steps}-{duration}-{r}", work / f"diffusers-{steps}-{duration}-{r}"
                    a.append(spawn(tta_args(run, steps, duration, out_a), out_a))
                    b.append(spawn(["diffusers", str(folder / "pipe"), str(steps), str(duration)], out_b))
                ours, ref = tta_output(out_a), np.load(out_b / "audio.npy")
                peak = float(np.abs(ref).max())
                if ours.shape != ref.shape:
                    raise SystemExit(f"{steps} steps, {duration} s: tta wrote {ours.shape}, diffusers {ref.shape}")
                err = float(np.abs(ours - ref).max()) / peak
                ta, tb = statistics.median(x["wall"] for x in a), statistics.median(x["wall"] for x in b)
                case = f"{steps} steps {duration:g} s"
                print(f"{case:<18}{ta:8.1f}{tb:13.1f}{ta / tb:7.2f}{max(x['rss_mb'] for x in a):8.0f}"
                      f"{max(x['rss_mb'] for x in b):9.0f}  {err:.1e}", flush=True)
                if err > 1e-4:
                    raise SystemExit(f"{case}: the outputs differ by {err:.1e} of the peak (more than 1e-4)")
                splits.append((case, steps, median_phases(a), median_phases(b)))
        print("\nper phase, median seconds (tta / diffusers):")
        names = [k for k in (*PHASES, "other") if any(k in s[2] or k in s[3] for s in splits)]
        print(f"{'case':<18}" + "".join(f"{k:>14}" for k in names))
        for case, _, pa, pb in splits:
            print(f"{case:<18}" + "".join(f"{pa.get(k, 0):6.2f}/{pb.get(k, 0):<6.2f}".rjust(14) for k in names))
        print("\nsampling loop per step against the bare U-Net forward on the same inputs (batch 2, one process):")
        for duration in args.durations:
            out = work / f"bare-{duration}"
            spawn(["bare", str(run), str(min(max(args.steps), 10)), str(duration)], out)
            m = json.loads((out / "bare.json").read_text())
            print(f"  {duration:g} s: loop {m['loop']:.3f} s/step, bare network {m['bare']:.3f} s/step: "
                  f"{m['loop'] / m['bare']:.3f}x; the loop's own {1000 * m['own']:.1f} ms/step; "
                  f"first step {m['first']:.2f} s")
        startup(max(3, args.repeats))


if __name__ == "__main__":
    main()
