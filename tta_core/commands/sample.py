"""``tta-run RECIPE sample``: text to audio files, spectrogram pictures and a manifest.

A thin layer over :func:`tta_core.sampling.load_pipeline`; see docs/sampling.md.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Verb, check_writable, load_plugins, load_recipe, number
from .base import run_dir as base_run_dir
from ..errors import UsageError
from ..manifest import NAME, append_rows, check_sample_manifest
from ..media import save_spectrogram, write_audio
from ..precision import PRECISIONS

#: --format -> (file extension, soundfile subtype)
FORMATS = {"wav": ("wav", "PCM_16"), "flac": ("flac", "PCM_16"), "float": ("wav", "FLOAT")}


def _args(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to generate")
    what.add_argument("--text", action="append", default=[], metavar="PROMPT", help="a prompt (repeatable)")
    what.add_argument("--prompts", metavar="FILE",
                      help="a file with one prompt per line, or FILENAME<TAB>PROMPT to name the output")
    what.add_argument("--negative", default=None, metavar="PROMPT",
                      help="negative prompt: replaces the unconditional half of guidance")
    what.add_argument("--n", "--n-per-prompt", dest="n", type=number(int, min=1), default=1,
                      help="outputs per prompt (default 1; under torchrun write --n-per-prompt, which torchrun "
                           "does not take for an abbreviation of its own --nnodes/--nproc-per-node)")
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
    where.add_argument("--adapter", action="append", default=[], metavar="PATH[:SCALE]",
                       help="apply an adapter (a file, or a checkpoint or stage folder of a stage with adapters:) "
                            "scaled by SCALE (default 1); repeatable, to mix several. The run's own adapters "
                            "apply without it")
    where.add_argument("--out", default=None, metavar="DIR",
                       help="output folder (default <run dir>/samples/); files already there are kept: new ones "
                            "of the same name get -1, -2, ...; the folder's manifest.jsonl is appended to")
    where.add_argument("--overwrite", action="store_true",
                       help="replace earlier outputs of the same name in --out instead of naming new ones -1, -2, ...")
    where.add_argument("--format", choices=list(FORMATS), default="wav",
                       help="wav (16-bit, default), flac (16-bit) or float (32-bit float WAV)")
    where.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    where.add_argument("--precision", choices=PRECISIONS, default="fp32",
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
    return check_out(out)


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
    tmp_audio, tmp_png = out / f".{stem}.tmp.{ext}", out / f".{stem}.tmp.png"
    try:
        write_audio(tmp_audio, wave, rate, subtype=subtype, format=ext.upper())
        save_spectrogram(tmp_png, wave, rate, audio, prompt)
        os.replace(tmp_audio, out / f"{stem}.{ext}")
        os.replace(tmp_png, out / f"{stem}.png")
    finally:
        tmp_audio.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)


def check_out(out: Path, flag: str = "--out") -> list[dict]:
    """Refuse an output folder that cannot be written or whose manifest ``tta-run sample``
    did not write (nothing is created here); the rows of the manifest already there."""
    check_writable(out, flag)
    return check_sample_manifest(out)


def option_flag(name: str) -> str:
    """A sampling option (a Python argument) as this command's flag: ``decode_steps`` -> ``--decode-steps``."""
    return "--" + name.replace("_", "-")


@dataclass
class Written:
    """What :func:`write_samples` wrote."""

    files: int
    renamed: int  # outputs named -1, -2, ... beside earlier ones of the same name
    manifest: Path
    rows: list[dict] = field(default_factory=list)  # the manifest line of each output, in order

    def summary(self, pipe: Any, st: Any) -> str:
        note = f"; {self.renamed} named -1, -2, ... beside earlier outputs of the same name (--overwrite replaces " \
               "them)" if self.renamed else ""
        return (f"wrote {self.files} file(s) to {self.manifest.parent} ({pipe.sample_rate} Hz, {st.duration:g} s, "
                f"{st.steps} steps, {st.sampler['type']}, guidance {st.guidance.scale:g}){note}; "
                f"manifest: {self.manifest}")


def _chosen(batch: Any, ranker: Any, n: int, pending: dict, rate: int) -> list[tuple]:
    """(output index, prompt, negative, wave, seed, batch index, rerank record, loudness) of each
    output of ``batch`` to write; with a ranker, a prompt's best candidate once all ``n`` are in."""
    import torch

    from ..eval.rerank import best

    chosen = []
    for b, (index, prompt, negative) in enumerate(zip(batch.indices, batch.prompts, batch.negatives)):
        level = batch.loudness[b] if batch.loudness else None
        if ranker is None:
            chosen.append((index, prompt, negative, batch.waves[b], batch.seed, b, None, level))
            continue
        entry = index // n  # candidates come prompt by prompt
        pending.setdefault(entry, []).append((batch.waves[b], batch.seed, b, level))
        if len(pending[entry]) == n:
            candidates = pending.pop(entry)
            top, sc = best(ranker, prompt, torch.stack([c[0] for c in candidates]), rate)
            record = {"embedder": ranker.name, "scores": sc, "chosen": top,
                      "candidate_seeds": [c[1] for c in candidates],
                      "candidate_batch_index": [c[2] for c in candidates]}
            wave, seed, b_best, level = candidates[top]
            chosen.append((entry, prompt, negative, wave, seed, b_best, record, level))
    return chosen


def _row(pipe: Any, st: Any, file: str, stem: str, prompt: str, negative: str, seed: int, b: int,
         record: dict | None, level: dict | None, ema: bool) -> dict:
    """The manifest line of one output."""
    return {
        "file": file, "spectrogram": f"{stem}.png", "prompt": prompt, "negative": negative,
        "seed": seed, "batch_index": b, "steps": st.steps, "guidance": st.guidance.scale,
        "guidance_rescale": st.guidance.rescale,
        "guidance_interval": list(st.guidance.interval) if st.guidance.interval else None,
        "sampler": st.sampler, "decode_steps": st.decode_steps, "duration": st.duration,
        "sample_rate": pipe.sample_rate, "channels": pipe.audio.channels,
        "checkpoint": pipe.checkpoint, "ema": ema,
        "weights": {name: w.describe() for name, w in pipe.weights.items()},
        "recipe": pipe.recipe.name, "precision": pipe.precision,
        **({"rerank": record} if record else {}),
        **(st.init.describe() if st.init is not None else {}),
        **({"audio_prompt": st.audio_prompt.path} if st.audio_prompt is not None else {}),
        **({"loudness": level} if level is not None else {}),
    }


def write_samples(pipe: Any, entries: list[tuple[str | None, str]], st: Any, out: Path, earlier: list[dict], *,
                  n: int = 1, ranker: Any = None, overwrite: bool = False, audio_format: str = "wav", ema: bool = True,
                  progress: Any = True, memory_check: bool = True, part: Any = None) -> Written:
    """Generate ``n`` outputs per (name or None, prompt) of ``entries`` with the settings ``st``
    and write each into ``out`` as audio, a spectrogram PNG and a manifest line, batch by
    batch, as ``tta-run sample`` does: a name already in ``out`` (on disk or in ``earlier``,
    the manifest rows :func:`check_out` returned) gets -1, -2, ... unless ``overwrite``; the
    manifest is appended to. With a ``ranker`` only each prompt's best of its ``n`` is kept.
    ``memory_check``: refuse a batch estimated beyond the device's free memory first.
    ``progress``: a bar (True), none (False), or a function called after each step
    (:meth:`tta_core.sampling.Pipeline.batches`). ``part``: this process's share under a
    multi-process launch (:mod:`tta_core.distributed`): it writes the clips of its
    batches, and rank 0 the manifest lines of all, in prompt order, at the end."""
    if part is not None and ranker is not None and st.batch_size % n:
        raise UsageError(f"reranking across processes needs each prompt's {n} candidates in one batch: give a batch "
                         f"size that is a multiple of {n} (--batch-size {n * max(1, st.batch_size // n)})")
    ext, subtype = FORMATS[audio_format]
    stems = _names(entries, 1 if ranker else n)
    taken = set() if overwrite else {Path(row["file"]).stem for row in earlier}
    batches = pipe.batches([prompt for _, prompt in entries], n=n, settings=st, progress=progress,
                           memory_check=memory_check, part=part)
    written = Written(0, 0, out / NAME)
    pending: dict = {}
    held: list[tuple[int, dict]] = []  # (output index, manifest line), under a multi-process launch
    for batch in batches:
        out.mkdir(parents=True, exist_ok=True)
        new, order = [], []
        for index, prompt, negative, wave, seed, b, record, level in _chosen(batch, ranker, n, pending,
                                                                            pipe.sample_rate):
            stem = stems[index] if overwrite else _free_stem(out, stems[index], (ext, "png"), taken)
            written.renamed += stem != stems[index]
            taken.add(stem)
            _write_outputs(out, stem, ext, subtype, wave, pipe.sample_rate, pipe.audio, prompt)
            new.append(_row(pipe, st, f"{stem}.{ext}", stem, prompt, negative, seed, b, record, level, ema))
            order.append(index)
        if part is None:
            append_rows(written.manifest, new)
        else:
            held += zip(order, new)
        written.files += len(new)
        written.rows += new
    if part is not None:
        from ..distributed import gather

        shared = gather([(held, written.renamed)], part)  # every process's lines and renames, on rank 0
        every = sorted((pair for lines, _ in shared for pair in lines), key=lambda pair: pair[0])
        if part.main:
            out.mkdir(parents=True, exist_ok=True)
            append_rows(written.manifest, [row for _, row in every])
            written.files, written.rows = len(every), [row for _, row in every]
            written.renamed = sum(renamed for _, renamed in shared)
    return written


def _entries(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """(name or None, prompt) per output asked for, checked with the flags that go with them."""
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
    return entries


def _sample(args: argparse.Namespace) -> int:
    from ..sampling import NamesOptions

    try:
        return _generate(args)
    except NamesOptions as exc:  # the library names its options as Python arguments
        raise exc.respelled(option_flag) from None


def _generate(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..sampling import check_duration

    entries = _entries(args)
    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    run_dir = base_run_dir(args, recipe)
    out = Path(args.out) if args.out else run_dir / "samples"
    earlier = _check_paths(args, run_dir, out)
    if args.duration is not None:
        check_duration(recipe.audio, args.duration)
    part, device = distributed.join(args.device)  # one of several processes (torchrun): its share
    try:
        code = _write(args, entries, recipe, registry, run_dir, out, earlier, part, device)
    except BaseException:
        distributed.leave(part, wait=False)  # the launcher stops the other processes
        raise
    distributed.leave(part)
    return code


def _write(args: argparse.Namespace, entries: list, recipe: Any, registry: Any, run_dir: Path, out: Path,
           earlier: list[dict], part: Any, device: str | None) -> int:
    from ..sampling import load_pipeline

    pipe = load_pipeline(recipe, run_dir=run_dir, ckpt=args.ckpt, device=device,
                         precision=args.precision, ema=not args.no_ema, registry=registry, adapters=args.adapter)
    ranker = None
    if args.rerank:
        from ..eval.rerank import ranker as make_ranker

        ranker = make_ranker(args.rerank, registry, recipe=recipe, device=device)
    st = pipe.settings(steps=args.steps, guidance=args.guidance, guidance_rescale=args.guidance_rescale,
                       guidance_interval=args.guidance_interval, sampler=args.sampler, seed=args.seed,
                       duration=args.duration, batch_size=args.batch_size, negative=args.negative,
                       decode_steps=args.decode_steps, init_audio=args.init_audio, strength=args.strength,
                       keep=args.keep, extend=args.extend, audio_prompt=args.audio_prompt, loudness=args.loudness)
    main = part is None or part.main
    written = write_samples(pipe, entries, st, out, earlier, n=args.n, ranker=ranker, overwrite=args.overwrite,
                            audio_format=args.format, ema=not args.no_ema, progress=main and not args.no_progress,
                            memory_check=not args.skip_memory_check, part=part)
    if main:
        print(written.summary(pipe, st) + (f"; made by {part.world} processes" if part is not None else ""))
    return 0


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new folder: DIR/weights/<component>.safetensors, a run folder `sample --run-dir DIR` reads")
    p.add_argument("--run-dir", default=None, help="the run directory (default runs/<recipe name>/)")
    p.add_argument("--ckpt", default=None, metavar="DIR", help="a checkpoint folder to take weights from first")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA copy")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:SCALE]",
                   help="merge this adapter too (as sample --adapter); repeatable")


def _merge(args: argparse.Namespace) -> int:
    """Fold the run's adapters (and --adapter ones) into the weights and write every
    component's weights as a run folder of its own."""
    from ..checkpoint import save_weights
    from ..exporting import check_out, merge_all_adapters, write_folder
    from ..runs import has_params, weights_file
    from ..sampling import load_pipeline

    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    out = check_out(args.out)
    check_writable(out, "--out")
    pipe = load_pipeline(recipe, run_dir=base_run_dir(args, recipe), ckpt=args.ckpt, device="cpu",
                         ema=not args.no_ema, registry=registry, adapters=args.adapter)
    applied = [f"{name}: {file}" for name, loaded in pipe.weights.items() for file in loaded.adapters]
    if not merge_all_adapters(pipe):
        raise UsageError("nothing to merge: the run has no adapters (a stage with adapters:) and no --adapter was given")

    def write(work: Path) -> None:
        (work / "weights").mkdir()
        for name, module in pipe.components.items():
            if has_params(module):
                save_weights(work / "weights" / weights_file(name), module.state_dict())

    write_folder(out, write)
    print("merged:\n  " + "\n  ".join(applied))
    print(f"wrote {out / 'weights'}; sample with: tta-run {recipe.path} sample --run-dir {out}")
    return 0


COMMANDS = [Verb("sample", "generate audio from text with the trained weights in the run dir", _sample, _args),
            Verb("merge-adapter", "fold a run's adapters (and --adapter ones) into its weights, written as a new run "
                 "folder", _merge, _merge_args)]
