"""``tta-run RECIPE sample``: text to audio files, spectrogram pictures and a manifest.

A thin layer over :func:`tta_core.sampling.load_pipeline`; see docs/sampling.md.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from ..cli import check_writable, load_plugins, load_recipe, number, verb
from ..errors import UsageError
from ..manifest import NAME, append_rows, check_sample_manifest

#: --format -> (file extension, soundfile subtype)
FORMATS = {"wav": ("wav", "PCM_16"), "flac": ("flac", "PCM_16"), "float": ("wav", "FLOAT")}


def _args(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to generate")
    what.add_argument("--text", action="append", default=[], metavar="PROMPT", help="a prompt (repeatable)")
    what.add_argument("--prompts", metavar="FILE",
                      help="a file with one prompt per line, or FILENAME<TAB>PROMPT to name the output")
    what.add_argument("--negative", default=None, metavar="PROMPT",
                      help="negative prompt: replaces the unconditional half of guidance")
    what.add_argument("--n", type=number(int, min=1), default=1, help="outputs per prompt (default 1)")
    what.add_argument("--rerank", default=None, metavar="EMBEDDER",
                      help="keep only the best of the --n candidates of each prompt by text-audio similarity: "
                           "an embedder name (clap) or mapping '{type: clap, pretrained: FILE}' (default the "
                           "recipe's eval.text_embedder); every candidate's score goes into the manifest")
    what.add_argument("--duration", type=number(float, above=0), default=None,
                      help="seconds (default: the init audio's length, else sample.duration or audio.duration)")
    guide = p.add_argument_group("audio-guided generation")
    guide.add_argument("--init-audio", default=None, metavar="FILE",
                       help="a clip to vary (--strength) or to regenerate around (--keep) or continue (--extend)")
    guide.add_argument("--strength", type=number(float, min=0, max=1), default=None, metavar="S",
                       help="with --init-audio: how far from it to go, 0 (keep it) to 1 (ignore it); SDEdit")
    guide.add_argument("--keep", default=None, metavar="START:END[,START:END]",
                       help="with --init-audio: spans (seconds) kept while everything else is regenerated")
    guide.add_argument("--extend", type=number(float, above=0), default=None, metavar="SECONDS",
                       help="with --init-audio: continue the clip by this many seconds")
    guide.add_argument("--audio-prompt", default=None, metavar="FILE",
                       help="condition on this clip's audio embedding instead of text (CLAP-conditioned models)")
    guide.add_argument("--loudness", type=number(float, min=-70, max=0), default=None, metavar="LUFS",
                       help="normalise each output to this integrated loudness (ITU-R BS.1770), true peak <= -1 dBTP")
    how = p.add_argument_group("how")
    how.add_argument("--steps", type=number(int, min=1), default=None, help="sampling steps (default: sample.steps or 50)")
    how.add_argument("--guidance", type=number(float, min=0), default=None, help="classifier-free guidance scale (1 = none)")
    how.add_argument("--guidance-rescale", type=number(float, min=0, max=1), default=None, metavar="PHI",
                     help="rescale the guided output's std toward the conditional one (0-1; 0.7 typical)")
    how.add_argument("--guidance-interval", type=number(float, min=0), nargs=2, default=None, metavar=("LO", "HI"),
                     help="guide only at noise levels sigma in [LO, HI]")
    how.add_argument("--sampler", default=None, help="sampler name (ddim, ddpm, vsampler, ...)")
    how.add_argument("--decode-steps", type=number(int, min=1), default=None, metavar="N",
                     help="diffusion autoencoders (diffae): decoding steps (default: sample.decode_steps, "
                          "else the autoencoder's decode_steps)")
    how.add_argument("--seed", type=number(int, min=0), default=None, help="seed of the first batch; batch k uses seed + k")
    how.add_argument("--batch-size", type=number(int, min=1), default=None, help="outputs per batch (default 8)")
    where = p.add_argument_group("weights and output")
    where.add_argument("--run-dir", default=None, help="the run directory (default runs/<recipe name>/)")
    where.add_argument("--ckpt", default=None, metavar="DIR", help="a checkpoint folder to take weights from first")
    where.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA copy")
    where.add_argument("--out", default=None, metavar="DIR",
                       help="output folder (default <run dir>/samples/); files already there are kept: new ones "
                            "of the same name get -1, -2, ...; the folder's manifest.jsonl is appended to")
    where.add_argument("--overwrite", action="store_true",
                       help="replace earlier outputs of the same name in --out instead of naming new ones -1, -2, ...")
    where.add_argument("--format", choices=list(FORMATS), default="wav",
                       help="wav (16-bit, default), flac (16-bit) or float (32-bit float WAV)")
    where.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    where.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                       help="run the denoiser under autocast in this precision (auto: bf16 where native, else fp32)")
    where.add_argument("--skip-memory-check", action="store_true",
                       help="generate even when a batch is estimated to need more memory than the device has free")
    where.add_argument("--no-progress", action="store_true",
                       help="no progress report (a bar on a terminal, else a line every 10 s per batch)")


def read_prompts(path: str | Path) -> list[tuple[str | None, str]]:
    """(name or None, prompt) per non-empty line of a prompt file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read --prompts {path}: {exc}") from None
    out = []
    for line in lines:
        if not line.strip():
            continue
        name, tab, prompt = line.partition("\t")
        if tab:
            out.append((Path(name.strip()).stem or None, prompt.strip()))
        else:
            out.append((None, line.strip()))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "prompt"


def _names(entries: list[tuple[str | None, str]], n: int) -> list[str]:
    """A file stem per output, prompt-major (each prompt's n outputs in a row)."""
    stems = []
    for i, (name, prompt) in enumerate(entries):
        base = name or f"{i:03d}_{_slug(prompt)}"
        stems += [base if n == 1 else f"{base}_{j}" for j in range(n)]
    return stems


def save_spectrogram(path: Path, wave, sample_rate: int, audio, title: str) -> None:
    """A PNG of the log-mel of ``wave`` [N] (the training mel, ``tta_core.data.mel``),
    titled with the prompt."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.mel import log_mel

    if audio.sample_rate != sample_rate:  # a vocoder at another rate than the recipe's audio
        audio = dataclasses.replace(audio, sample_rate=sample_rate)
    mel = log_mel(wave.float()[None], audio)[0, 0].T  # [F, T]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", extent=(0, wave.numel() / sample_rate, 0, mel.shape[0]))
    ax.set_title(title if len(title) <= 90 else title[:87] + "...", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel band")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _check_paths(args: argparse.Namespace, run_dir: Path, out: Path) -> list[dict]:
    """What can be checked of the paths before any model loads (nothing is created here); the
    rows of the manifest already in ``out``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; it names the run folder that `tta-run RECIPE train` "
                         "writes (runs/<recipe name>/ by default)")
    if args.ckpt is not None and not Path(args.ckpt).is_dir():
        what = "is a file" if Path(args.ckpt).exists() else "does not exist"
        raise UsageError(f"--ckpt {args.ckpt} {what}: it names a checkpoint folder, e.g. "
                         f"{run_dir}/<stage>/checkpoints/step-00001000")
    for flag in ("init_audio", "audio_prompt"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            raise UsageError(f"--{flag.replace('_', '-')} {path} {what}: give an audio file")
    check_writable(out, "--out")
    return check_sample_manifest(out)


def _free_stem(out: Path, stem: str, suffixes: tuple[str, ...], taken: set[str]) -> str:
    """``stem``, or ``stem-1``, ``stem-2``, ... : the first whose files do not exist yet and
    that no manifest line names."""
    candidate, k = stem, 0
    while candidate in taken or any((out / f"{candidate}.{s}").exists() for s in suffixes):
        k += 1
        candidate = f"{stem}-{k}"
    return candidate


def _write_outputs(out: Path, stem: str, ext: str, subtype: str, wave, rate: int, audio, prompt: str) -> None:
    """The audio file and its spectrogram, each written to a temporary name and renamed into
    place once both exist, so a failure leaves neither behind."""
    import soundfile

    tmp_audio, tmp_png = out / f".{stem}.tmp.{ext}", out / f".{stem}.tmp.png"
    try:
        data = wave.clamp(-1, 1) if subtype == "PCM_16" else wave
        soundfile.write(tmp_audio, data.numpy().T, rate, subtype=subtype, format=ext.upper())
        save_spectrogram(tmp_png, wave if wave.ndim == 1 else wave.mean(0), rate, audio, prompt)
        os.replace(tmp_audio, out / f"{stem}.{ext}")
        os.replace(tmp_png, out / f"{stem}.png")
    finally:
        tmp_audio.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)


@verb("sample", "generate audio from text with the trained weights in the run dir", _args)
def _sample(args: argparse.Namespace) -> int:
    import torch

    from ..runs import default_run_dir
    from ..sampling import audio_config, check_duration, load_pipeline

    entries: list[tuple[str | None, str]] = [(None, t) for t in args.text]
    if args.prompts:
        entries += read_prompts(args.prompts)
    if args.audio_prompt:
        if entries:
            raise UsageError("--audio-prompt conditions on audio instead of text: give it without --text/--prompts")
        entries = [(Path(args.audio_prompt).stem, f"audio prompt: {args.audio_prompt}")]
    if not entries:
        raise UsageError("nothing to generate: give --text PROMPT (repeatable), --prompts FILE or --audio-prompt FILE")
    if args.guidance_interval is not None and args.guidance_interval[0] > args.guidance_interval[1]:
        raise UsageError(f"--guidance-interval LO HI needs LO <= HI, got {args.guidance_interval}")
    if args.rerank and args.n < 2:
        raise UsageError("--rerank keeps the best of --n candidates per prompt: give --n 2 or more")
    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
    out = Path(args.out) if args.out else run_dir / "samples"
    earlier = _check_paths(args, run_dir, out)
    if args.duration is not None:
        check_duration(audio_config(recipe), args.duration, "--duration")
    pipe = load_pipeline(recipe, run_dir=run_dir, ckpt=args.ckpt, device=args.device,
                         precision=args.precision, ema=not args.no_ema, registry=registry)
    ext, subtype = FORMATS[args.format]
    ranker = None
    if args.rerank:
        from ..eval.rerank import best, ranker as make_ranker

        ranker = make_ranker(args.rerank, registry, recipe=recipe, device=args.device)
    stems = _names(entries, 1 if ranker else args.n)
    st = pipe.settings(steps=args.steps, guidance=args.guidance, guidance_rescale=args.guidance_rescale,
                       guidance_interval=args.guidance_interval, sampler=args.sampler, seed=args.seed,
                       duration=args.duration, batch_size=args.batch_size, negative=args.negative,
                       decode_steps=args.decode_steps, init_audio=args.init_audio, strength=args.strength,
                       keep=args.keep, extend=args.extend, audio_prompt=args.audio_prompt, loudness=args.loudness)
    manifest_path = out / NAME
    taken = set() if args.overwrite else {Path(row["file"]).stem for row in earlier}
    batches = pipe.batches([prompt for _, prompt in entries], n=args.n, settings=st,
                           progress=not args.no_progress, memory_check=not args.skip_memory_check)
    written, renamed, pending = 0, 0, {}
    for batch in batches:
        out.mkdir(parents=True, exist_ok=True)
        new = []
        chosen = []  # (output index, prompt, negative, wave, seed, batch index, rerank record)
        for b, (index, prompt, negative) in enumerate(zip(batch.indices, batch.prompts, batch.negatives)):
            level = batch.loudness[b] if batch.loudness else None
            if ranker is None:
                chosen.append((index, prompt, negative, batch.waves[b], batch.seed, b, None, level))
                continue
            entry = index // args.n  # candidates come prompt by prompt
            pending.setdefault(entry, []).append((batch.waves[b], batch.seed, b, level))
            if len(pending[entry]) == args.n:
                candidates = pending.pop(entry)
                top, sc = best(ranker, prompt, torch.stack([c[0] for c in candidates]), pipe.sample_rate)
                record = {"embedder": ranker.name, "scores": sc, "chosen": top,
                          "candidate_seeds": [c[1] for c in candidates],
                          "candidate_batch_index": [c[2] for c in candidates]}
                wave, seed, b_best, level = candidates[top]
                chosen.append((entry, prompt, negative, wave, seed, b_best, record, level))
        for index, prompt, negative, wave, seed, b, record, level in chosen:
            stem = stems[index] if args.overwrite else _free_stem(out, stems[index], (ext, "png"), taken)
            renamed += stem != stems[index]
            taken.add(stem)
            _write_outputs(out, stem, ext, subtype, wave, pipe.sample_rate, pipe.audio, prompt)
            new.append({
                "file": f"{stem}.{ext}", "spectrogram": f"{stem}.png", "prompt": prompt, "negative": negative,
                "seed": seed, "batch_index": b, "steps": st.steps, "guidance": st.guidance.scale,
                "guidance_rescale": st.guidance.rescale,
                "guidance_interval": list(st.guidance.interval) if st.guidance.interval else None,
                "sampler": st.sampler, "decode_steps": st.decode_steps, "duration": st.duration,
                "sample_rate": pipe.sample_rate, "channels": pipe.audio.channels,
                "checkpoint": pipe.checkpoint, "ema": not args.no_ema,
                "weights": {name: w.describe() for name, w in pipe.weights.items()},
                "recipe": recipe.name, "precision": pipe.precision,
                **({"rerank": record} if record else {}),
                **(st.init.describe() if st.init is not None else {}),
                **({"audio_prompt": st.audio_prompt.path} if st.audio_prompt is not None else {}),
                **({"loudness": level} if level is not None else {}),
            })
        append_rows(manifest_path, new)
        written += len(new)
    note = f"; {renamed} named -1, -2, ... beside earlier outputs of the same name (--overwrite replaces them)" \
        if renamed else ""
    print(f"wrote {written} file(s) to {out} ({pipe.sample_rate} Hz, {st.duration:g} s, {st.steps} steps, "
          f"{st.sampler['type']}, guidance {st.guidance.scale:g}){note}; manifest: {manifest_path}")
    return 0
