"""``tta-run [RECIPE] eval``: metrics of generated audio, the autoencoder's round trip, and
prompt adherence.

Metrics (the default): ``--generated DIR`` against ``--reference DIR`` (folders of audio, or
folders with a ``manifest.jsonl``) or, given a recipe, its valid split. ``--metrics`` picks
from fd, kl, is, clap (default: those the embedders allow); ``--embedder`` the backbone (a
name or a YAML mapping, ``'{type: panns, weights: Cnn14_16k_mAP=0.438.pth}'``; default the
recipe's ``eval.embedder``, else ``mel_stats``, which needs no weights); ``--text-embedder``
the text-audio model for the clap score (an embedder with a text side serves as its own). Comparing two folders needs no trained weights, nor
a recipe: ``tta-run eval --generated A --reference B``. See tta_core.eval.compare.

``--reconstruction``: the trained autoencoder (and vocoder) round trip on the valid split
(tta_core.eval.reconstruction).

``--adherence``: do generated clips sound like the label their prompt names? A classifier
fitted on labelled real clips (data.train, or the --dataset manifests; never generated ones) labels each
generated clip (see tta_core.eval.adherence). Without ``--generated DIR``, the clips are
generated first, ``--n-per-label`` per label from that label's training captions, with the
run's trained weights, into ``--out`` (default ``<run dir>/adherence/``), by the function
``tta-run sample`` writes with (:func:`tta_core.commands.sample.write_samples`).

Every mode writes ``eval.json`` into ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .base import Command, Verb, load_plugins, load_recipe, number, run_dir
from ..errors import TtaError, UsageError


def _compare_args(p: argparse.ArgumentParser) -> None:
    from ..eval.compare import METRICS

    p.add_argument("--generated", metavar="DIR", help="the clips to score (a folder; its manifest.jsonl gives prompts)")
    p.add_argument("--reference", metavar="DIR", help="reference clips (a folder; default: the recipe's valid split)")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"comma-separated, from {', '.join(METRICS)} (reconstruction: mel_l1, psnr, ssim, lsd, "
                        "si_sdr, pesq); default: what the embedders allow")
    p.add_argument("--embedder", default=None, metavar="SPEC",
                   help="the backbone: a name (mel_stats, panns, clap) or a YAML mapping "
                        "'{type: panns, weights: FILE}' (default: the recipe's eval.embedder, else mel_stats)")
    p.add_argument("--text-embedder", default=None, metavar="SPEC",
                   help="the text-audio embedder for the clap metric, e.g. '{type: clap, pretrained: FILE}'")
    p.add_argument("--max-missing", type=number(float, min=0, max=1), default=None,
                   help="fraction of a set's files that may be missing or unreadable before the run fails "
                        "instead of scoring the rest (default 0.05)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="where embeddings are cached (default ~/.cache/tta/embeddings; 'none' to not cache)")
    p.add_argument("--out", metavar="DIR",
                   help="where eval.json (and generated clips) go (default: --generated, or <run dir>/adherence/)")


def _compare_args_with_device(p: argparse.ArgumentParser) -> None:
    _compare_args(p)
    p.add_argument("--device", default=None)


def _args(p: argparse.ArgumentParser) -> None:
    _compare_args(p)
    p.add_argument("--adherence", action="store_true", help="prompt adherence of generated clips (labelled datasets)")
    p.add_argument("--reconstruction", action="store_true",
                   help="the autoencoder (and vocoder) round trip on the valid split")
    p.add_argument("--n-items", type=number(int, min=1), default=None, help="--reconstruction: at most this many clips")
    p.add_argument("--decode-steps", type=number(int, min=1), default=None, help="--reconstruction: diffusion autoencoders' steps")
    p.add_argument("--run-dir", default=None, help="the run folder (default runs/<recipe name>/)")
    p.add_argument("--n-per-label", type=number(int, min=1), default=4, help="clips to generate per label (default 4)")
    p.add_argument("--dataset", action="append", default=[], metavar="MANIFEST",
                   help="--adherence: a labelled jsonl manifest to take the labels, prompts and real clips from "
                        "(default: the recipe's data.train); repeatable, the sets are pooled")
    p.add_argument("--labels", default=None, metavar="LIST",
                   help="--adherence: score only these labels (comma-separated; default: every label of the set)")
    p.add_argument("--reference-per-label", type=number(int, min=2), default=100,
                   help="labelled training clips per label to fit the classifier on (default 100)")
    p.add_argument("--min-accuracy", type=number(float, min=0, max=1), default=None,
                   help="exit 1 when the overall accuracy is below this (for CI)")
    p.add_argument("--seed", type=number(int, min=0), default=0)
    p.add_argument("--steps", type=number(int, min=1), default=None)
    p.add_argument("--guidance", type=number(float, min=0), default=None)
    p.add_argument("--sampler", default=None, help="--adherence: the sampler to generate with (as sample --sampler)")
    p.add_argument("--device", default=None)
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:SCALE]",
                   help="--adherence: sample with this adapter too (as sample --adapter); repeatable")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="--adherence: generate even when a batch is estimated to need more memory than is free")


def _features(waves, audio):
    """Adherence features of fitted waves [N] (see tta_core.eval.adherence)."""
    import torch

    from ..data.mel import log_mel
    from ..eval.adherence import features

    return features(log_mel(torch.stack(waves).float(), audio))


def _labelled(recipe, registry, manifests: list[str], labels: str | None) -> dict[str, list]:
    """label -> items of the labelled set: the ``--dataset`` manifests pooled, else data.train;
    only ``labels`` (comma-separated) when given."""
    from ..recipe import build

    if manifests:
        for path in manifests:
            if not Path(path).is_file():
                raise UsageError(f"--dataset {path}: no such manifest")
        nodes = [({"type": "jsonl", "manifest": str(path)}, f"--dataset {path}") for path in manifests]
    else:
        node = (recipe.get("data") or {}).get("train")
        if node is None:
            raise UsageError("--adherence needs a labelled set: data.train in the recipe (e.g. the synthetic `sounds` "
                             "set), or --dataset MANIFEST")
        nodes = [(node, "data.train")]
    by_label: dict[str, list] = {}
    for node, where in nodes:
        items = [it for it in build(node, "dataset", registry) if it.label]
        if not items:
            raise UsageError(f"--adherence needs labels: {where} has no item with a label")
        for item in items:
            by_label.setdefault(item.label, []).append(item)
    if labels:
        wanted = [x.strip() for x in labels.split(",") if x.strip()]
        unknown = [x for x in wanted if x not in by_label]
        if unknown:
            raise UsageError(f"--labels: {', '.join(unknown)} not in the labelled set (its labels: "
                             f"{', '.join(sorted(by_label))})")
        if len(wanted) < 2:
            raise UsageError("--labels: name at least two labels (the classifier tells labels apart)")
        by_label = {x: by_label[x] for x in wanted}
    return by_label


def _reference(by_label: dict[str, list], audio, per_label: int, seed: int):
    """Labelled clips: features of a window of the recipe's duration (from the start and from
    the end of each clip), their labels, and caption -> label."""
    import torch

    from ..data.audio import BadAudio, fit, load_clip, max_offset_frames

    items = [item for group in by_label.values() for item in group]
    captions = {c: item.label for item in items for c in item.captions}
    g = torch.Generator().manual_seed(seed)
    waves, labels = [], []
    for label, group in sorted(by_label.items()):
        order = torch.randperm(len(group), generator=g).tolist()[:per_label]
        for i in order:
            try:
                wave = load_clip(group[i].audio, audio).wave
            except BadAudio:
                continue
            for offset in {0, max_offset_frames(wave.shape[0], audio)}:  # the start and the end
                waves.append(fit(wave, audio, offset))
                labels.append(label)
    return _features(waves, audio), labels, captions, by_label


def _generated(folder: Path, captions: dict[str, str], audio, only: set[str] | None = None):
    from ..data.audio import BadAudio, fit, load_clip
    from ..manifest import NAME, latest_rows, read_rows

    manifest = folder / NAME
    if not manifest.exists():
        raise UsageError(f"{folder} has no manifest.jsonl (write the clips with `tta-run RECIPE sample --out {folder}`)")
    rows = [row for row in latest_rows(read_rows(manifest)) if only is None or Path(row["file"]).stem in only]
    waves, labels, problems = [], [], []
    for row in rows:
        label = row.get("label") or captions.get(row.get("prompt", ""))
        if label is None:
            problems.append(f"{row.get('file')}: prompt {row.get('prompt')!r} names no label of the training set")
            continue
        try:
            waves.append(fit(load_clip(folder / row["file"], audio).wave, audio))
        except (BadAudio, KeyError) as exc:
            problems.append(f"{row.get('file')}: unreadable ({exc})")
            continue
        labels.append(label)
    if problems and len(problems) > 0.1 * max(1, len(rows)):
        raise TtaError(f"{len(problems)} of {len(rows)} generated clips cannot be scored:\n  " + "\n  ".join(problems[:10]))
    if not waves:
        raise TtaError(f"no generated clip to score in {folder}")
    return _features(waves, audio), labels, problems


def _cache_dir(text: str | None) -> Path | None:
    if text == "none":
        return None
    if text:
        return Path(text)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "tta" / "embeddings"


def _write(out: Path, result: dict, lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines))
    print(f"report: {out / 'eval.json'}")


def _metrics(args: argparse.Namespace, recipe: Any, registry: Any) -> int:
    from ..eval.compare import (compare, default_embedder, default_metrics, embedder_from_spec, folder_set,
                                recipe_set, spec_of, table)
    from ..interfaces import has_text

    if not args.generated:
        raise UsageError("give --generated DIR: the clips to score (write them with `tta-run RECIPE sample --out DIR`)")
    settings = dict((recipe.get("eval") or {}) if recipe is not None else {})
    spec = spec_of(args.embedder) or spec_of(settings.get("embedder")) or default_embedder(registry)
    text_spec = spec_of(args.text_embedder) or spec_of(settings.get("text_embedder"))
    embedder = embedder_from_spec(spec, registry, args.device)
    text_embedder = embedder_from_spec(text_spec, registry, args.device) if text_spec else None
    if text_embedder is None and has_text(embedder):  # one text-audio model serves both roles
        text_embedder = embedder
    names = [n.strip() for n in args.metrics.split(",") if n.strip()] if args.metrics else \
        list(settings.get("metrics") or default_metrics(embedder, text_embedder))
    generated = folder_set(args.generated, "generated")
    reference = folder_set(args.reference, "reference") if args.reference else \
        (recipe_set(recipe, registry) if recipe is not None and any(n in ("fd", "kl") for n in names) else None)
    max_missing = args.max_missing if args.max_missing is not None else float(settings.get("max_missing", 0.05))
    result = compare(generated, reference, names, embedder, text_embedder, max_missing=max_missing,
                     cache=_cache_dir(args.cache))
    lines = table(result)
    for role, problems in result["not_used"].items():
        lines += [f"not used ({role}): {p}" for p in problems[:20]]
    _write(Path(args.out) if args.out else Path(args.generated), result, lines)
    return 0


def _reconstruction(args: argparse.Namespace, recipe: Any, registry: Any) -> int:
    from ..eval.reconstruction import DEFAULT, reconstruction
    from ..recipe import build, component_kind
    from ..sampling import load_pipeline

    data = recipe.get("data") or {}
    split = next((s for s in ("valid", "test") if s in data), None)
    if split is None:
        raise UsageError("--reconstruction evaluates on held-out clips: the recipe has no data.valid (nor data.test)")
    items = list(build(data[split], "dataset", registry))
    if args.n_items:
        items = items[: args.n_items]
    names = [n.strip() for n in args.metrics.split(",") if n.strip()] if args.metrics else list(DEFAULT)
    max_missing = args.max_missing if args.max_missing is not None else 0.05
    kinds = {name: component_kind(recipe, name, registry) for name in recipe.components}
    if set(kinds.values()) == {"vocoder"}:  # a vocoder recipe: the vocoder against Griffin-Lim
        return _vocoder_reconstruction(args, recipe, registry, items, names, max_missing, split, kinds)
    pipe = load_pipeline(recipe, run_dir=run_dir(args, recipe), device=args.device, registry=registry)
    result = reconstruction(pipe, items, names, decode_steps=args.decode_steps, max_missing=max_missing)
    result.update({"recipe": recipe.name, "split": f"data.{split}", "checkpoint": pipe.checkpoint,
                   "audio": pipe.audio.to_dict()})
    voc = result.get("vocoder_only", {})
    lines = [f"{'metric':<12} {'round trip':>12}" + (f" {'vocoder only':>14}" if voc else "")]
    for name, value in result["metrics"].items():
        lines.append(f"{name:<12} {value:>12.4f}" + (f" {voc[name]:>14.4f}" if name in voc else ""))
    lines.append(f"{result['counts']['used']} of {result['counts']['expected']} clips of data.{split}")
    lines += [f"not used: {p}" for p in result["not_used"][:20]]
    _write(Path(args.out) if args.out else run_dir(args, recipe) / "reconstruction", result, lines)
    return 0


def _vocoder_reconstruction(args: argparse.Namespace, recipe: Any, registry: Any, items: list, names: list[str],
                            max_missing: float, split: str, kinds: dict) -> int:
    """A recipe of vocoders alone: each (with its trained weights) and Griffin-Lim on the
    log-mels of the same held-out clips, side by side."""
    from ..eval.reconstruction import vocoders
    from ..recipe import build
    from ..sampling import load_weights_for, pick_device

    device = pick_device(args.device)
    audio = recipe.audio
    built = {name: build(recipe.components[name], "vocoder", registry, where=f"components.{name}", audio=audio)
             for name in kinds}
    weights = load_weights_for(built, recipe, run_dir(args, recipe))
    named = {name: v.to(device).eval() for name, v in built.items()}
    if "griffin_lim" not in {recipe.components[n]["type"] for n in kinds}:
        named["griffin_lim"] = build({"type": "griffin_lim"}, "vocoder", registry, audio=audio).to(device)
    result = vocoders(named, items, audio, names, max_missing=max_missing, device=device)
    result.update({"recipe": recipe.name, "split": f"data.{split}", "audio": audio.to_dict(),
                   "weights": {name: w.describe() for name, w in weights.items()}})
    rows = result["vocoders"]
    metrics = list(next(iter(rows.values())))
    lines = [f"{'metric':<12}" + "".join(f" {name:>14}" for name in rows)]
    for metric in metrics:
        lines.append(f"{metric:<12}" + "".join(f" {rows[name][metric]:>14.4f}" for name in rows))
    lines.append(f"{result['counts']['used']} of {result['counts']['expected']} clips of data.{split}")
    lines += [f"not used: {p}" for p in result["not_used"][:20]]
    _write(Path(args.out) if args.out else run_dir(args, recipe) / "reconstruction", result, lines)
    return 0


def _eval_folders(args: argparse.Namespace) -> int:
    return _metrics(args, None, load_plugins(args).registry)


def _eval(args: argparse.Namespace) -> int:
    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    if args.adherence and args.reconstruction:
        raise UsageError("--adherence and --reconstruction are separate evaluations: run them one at a time")
    if args.reconstruction:
        return _reconstruction(args, recipe, registry)
    if not args.adherence:
        return _metrics(args, recipe, registry)
    return _adherence(args, recipe, registry)


#: Options eval --adherence has a flag for; it names the other sampling options by their recipe key.
_ADHERENCE_FLAGS = ("steps", "guidance", "sampler", "seed", "device", "skip_memory_check")


def _adherence_option(name: str) -> str:
    from .sample import option_flag

    return option_flag(name) if name in _ADHERENCE_FLAGS else f"sample.{name} (--set)"


def _adherence(args: argparse.Namespace, recipe: Any, registry: Any) -> int:
    from ..sampling import NamesOptions

    try:
        return _score_adherence(args, recipe, registry)
    except NamesOptions as exc:  # the library names its options as Python arguments
        raise exc.respelled(_adherence_option) from None


def _generate_per_label(args: argparse.Namespace, recipe: Any, registry: Any, by_label: dict, run_dir: Path,
                        out: Path, part: Any = None, device: str | None = None) -> set[str]:
    """``--n-per-label`` clips per label from that label's training captions, written into ``out``
    as ``tta-run sample --overwrite`` writes them: the clips of this evaluation replace those of
    an earlier one under the same names (the manifest keeps every earlier line). Their names.
    ``part``: this process's share under torchrun (each makes its batches; rank 0 the manifest)."""
    import torch

    from ..sampling import load_pipeline
    from .sample import check_out, write_samples

    earlier = check_out(out)
    g = torch.Generator().manual_seed(args.seed)
    entries = []
    for label, group in sorted(by_label.items()):
        pool = sorted({c for item in group for c in item.captions})
        for k in range(args.n_per_label):
            entries.append((f"{label}-{k}", pool[int(torch.randint(len(pool), (1,), generator=g))]))
    pipe = load_pipeline(recipe, run_dir=run_dir, device=device, registry=registry,
                         adapters=getattr(args, "adapter", ()))
    st = pipe.settings(steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler)
    written = write_samples(pipe, entries, st, out, earlier, overwrite=True, progress=False,
                            memory_check=not args.skip_memory_check, part=part)
    if part is None or part.main:
        print(written.summary(pipe, st) + (f"; made by {part.world} processes" if part is not None else ""))
    return {name for name, _ in entries}


def _score_adherence(args: argparse.Namespace, recipe: Any, registry: Any) -> int:
    from .. import distributed

    part, device = distributed.join(args.device)  # one of several processes (torchrun): its share of the clips
    try:
        code = _score_adherence_part(args, recipe, registry, part, device)
    except BaseException:
        distributed.leave(part, wait=False)  # the launcher stops the other processes
        raise
    distributed.leave(part)
    return code


def _score_adherence_part(args: argparse.Namespace, recipe: Any, registry: Any, part: Any, device: str | None) -> int:
    import dataclasses

    from ..eval.adherence import AdherenceClassifier, score, split_holdout

    # the metrics read the mono mix
    audio = dataclasses.replace(recipe.audio, channels=1)
    home = run_dir(args, recipe)
    by_label = _labelled(recipe, registry, args.dataset, args.labels)
    feats, labels, captions, by_label = _reference(by_label, audio, args.reference_per_label, args.seed)
    train, held = split_holdout(len(labels), 0.2, args.seed)
    clf = AdherenceClassifier.fit(feats[train], [labels[i] for i in train])
    reference = score(clf, feats[held], [labels[i] for i in held], 0.0).overall
    clf = AdherenceClassifier.fit(feats, labels)

    out = Path(args.out) if args.out else (Path(args.generated) if args.generated else home / "adherence")
    if args.generated:
        folder, only = Path(args.generated), None  # every clip of --generated is scored
    else:
        folder, only = out, _generate_per_label(args, recipe, registry, by_label, home, out, part, device)
    if part is not None and not part.main:
        return 0  # rank 0 scores every clip
    gen_feats, gen_labels, problems = _generated(folder, captions, audio, only)
    report = score(clf, gen_feats, gen_labels, reference)
    print("\n".join(report.lines()))
    for problem in problems:
        print(f"not scored: {problem}")
    out.mkdir(parents=True, exist_ok=True)
    result = {"adherence": report.to_dict(), "generated": str(folder), "recipe": recipe.name,
              "reference": {"split": "train", "datasets": list(args.dataset), "per_label": args.reference_per_label,
                            "audio": audio.to_dict(), "held_out_accuracy": reference},
              "not_scored": problems}
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(f"clips and spectrograms: {folder}; report: {out / 'eval.json'}")
    if args.min_accuracy is not None and report.overall < args.min_accuracy:
        print(f"adherence {report.overall:.2f} is below the required {args.min_accuracy:.2f}")
        return 1
    return 0


COMMANDS = [
    Command("eval", "metrics of generated audio against reference audio (no recipe needed)", _eval_folders,
            _compare_args_with_device),
    Verb("eval", "evaluate: metrics of generated audio (fd, kl, is, clap), --reconstruction, --adherence", _eval, _args),
]
