"""``tta-run RECIPE eval``: checks and metrics over generated audio.

``--adherence``: do generated clips sound like the label their prompt names? A classifier
fitted on the recipe's labelled training clips (never on generated ones) labels each
generated clip (see tta_core.eval.adherence). Without ``--generated DIR``, the clips are
generated first, ``--n-per-label`` per label from that label's training captions, with the
run's trained weights, into ``--out`` (default ``<run dir>/adherence/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli import load_plugins, load_recipe, verb
from ..errors import TtaError, UsageError


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adherence", action="store_true", help="prompt adherence of generated clips (labelled datasets)")
    p.add_argument("--generated", metavar="DIR", help="score these clips (a folder with manifest.jsonl from `sample`)")
    p.add_argument("--out", metavar="DIR", help="where generated clips and eval.json go (default <run dir>/adherence/)")
    p.add_argument("--run-dir", default=None, help="the run folder (default runs/<recipe name>/)")
    p.add_argument("--n-per-label", type=int, default=4, help="clips to generate per label (default 4)")
    p.add_argument("--reference-per-label", type=int, default=100,
                   help="labelled training clips per label to fit the classifier on (default 100)")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="exit 1 when the overall accuracy is below this (for CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--device", default=None)


def _features(waves, audio):
    """Adherence features of fitted waves [N] (see tta_core.eval.adherence)."""
    import torch

    from ..data.mel import log_mel
    from ..eval.adherence import features

    return features(log_mel(torch.stack(waves).float(), audio))


def _reference(recipe, registry, audio, per_label: int, seed: int):
    """Labelled clips of data.train: features of a window of the recipe's duration (from
    the start and from the end of each clip), their labels, and caption -> label."""
    import torch

    from ..data.audio import BadAudio, fit, load_clip, max_offset_frames
    from ..recipe import build

    node = (recipe.get("data") or {}).get("train")
    if node is None:
        raise UsageError("--adherence needs a labelled data.train in the recipe (e.g. the synthetic `sounds` set)")
    items = [it for it in build(node, "dataset", registry) if it.label]
    if not items:
        raise UsageError("--adherence needs labels: data.train has no item with a label")
    by_label: dict[str, list] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
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


def _generated(folder: Path, captions: dict[str, str], audio):
    from ..data.audio import BadAudio, fit, load_clip

    manifest = folder / "manifest.jsonl"
    if not manifest.exists():
        raise UsageError(f"{folder} has no manifest.jsonl (write the clips with `tta-run RECIPE sample --out {folder}`)")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
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


@verb("eval", "evaluate generated audio (--adherence: prompt adherence on a labelled set)", _args)
def _eval(args: argparse.Namespace) -> int:
    from ..cli import main
    from ..data.config import AudioConfig
    from ..eval.adherence import AdherenceClassifier, score, split_holdout
    from ..runs import default_run_dir

    if not args.adherence:
        raise UsageError("choose what to evaluate: --adherence (more metrics come with the evaluation layer)")
    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    import dataclasses

    # the metrics read the mono mix
    audio = dataclasses.replace(AudioConfig.from_mapping(recipe.get("audio")), channels=1)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
    feats, labels, captions, by_label = _reference(recipe, registry, audio, args.reference_per_label, args.seed)
    train, held = split_holdout(len(labels), 0.2, args.seed)
    clf = AdherenceClassifier.fit(feats[train], [labels[i] for i in train])
    reference = score(clf, feats[held], [labels[i] for i in held], 0.0).overall
    clf = AdherenceClassifier.fit(feats, labels)

    out = Path(args.out) if args.out else (Path(args.generated) if args.generated else run_dir / "adherence")
    if args.generated:
        folder = Path(args.generated)
    else:
        import torch

        folder = out
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(args.seed)
        lines = []
        for label, group in sorted(by_label.items()):
            pool = sorted({c for item in group for c in item.captions})
            for k in range(args.n_per_label):
                lines.append(f"{label}-{k}\t{pool[int(torch.randint(len(pool), (1,), generator=g))]}")
        prompts = folder / "prompts.txt"
        prompts.write_text("\n".join(lines) + "\n")
        (folder / "manifest.jsonl").unlink(missing_ok=True)
        cmd = [str(args.recipe_path), "sample", "--prompts", str(prompts), "--out", str(folder),
               "--run-dir", str(run_dir), "--seed", str(args.seed), "--no-progress"]
        for flag in ("steps", "guidance", "device"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        for text in args.overrides:
            cmd += ["--set", text]
        code = main(cmd)
        if code:
            return code
    gen_feats, gen_labels, problems = _generated(folder, captions, audio)
    report = score(clf, gen_feats, gen_labels, reference)
    print("\n".join(report.lines()))
    for problem in problems:
        print(f"not scored: {problem}")
    out.mkdir(parents=True, exist_ok=True)
    result = {"adherence": report.to_dict(), "generated": str(folder), "recipe": recipe.name,
              "reference": {"split": "train", "per_label": args.reference_per_label,
                            "audio": audio.to_dict(), "held_out_accuracy": reference},
              "not_scored": problems}
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(f"clips and spectrograms: {folder}; report: {out / 'eval.json'}")
    if args.min_accuracy is not None and report.overall < args.min_accuracy:
        print(f"adherence {report.overall:.2f} is below the required {args.min_accuracy:.2f}")
        return 1
    return 0
