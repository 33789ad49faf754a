"""Generated audio against reference audio: the sets, their embeddings, and the metrics of
:mod:`tta_core.eval.metrics` over them (what ``tta-run [RECIPE] eval --generated DIR`` runs).

A set is a folder or a recipe's data split:

- a folder with ``manifest.jsonl``: rows as ``tta-run sample`` writes them (``file``,
  ``prompt``) or as dataset manifests have them (``audio``, ``caption`` / ``captions``);
- a folder without one: every audio file under it (.wav .flac .ogg .mp3), sorted;
- a recipe's ``data.valid`` (or ``data.test``) split.

Items are keyed by file name without its extension (what KL pairs generated and reference
clips by, as audioldm_eval does) and carry their text when the source has one (the CLAP score
needs it). Every listed file is loaded mono at the embedder's rate (soundfile, then
``torchaudio.functional.resample``), whole: no crop, no padding, no level normalisation.
Files that are missing or unreadable are listed; when they exceed ``max_missing`` of a set
the evaluation stops instead of scoring a subset.

Embeddings are cached per set and embedder: the key holds the embedder's ``settings()`` (its
rate, windowing, weights and their hash), the loading settings above, and every file's path,
size and modification time, so any change computes them again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import TtaError, UsageError
from ..interfaces import has_text, is_classifier

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
#: How files are read for every embedder (part of every cache key and report).
LOADING = {"channels": "mono mix", "resampler": "torchaudio.functional.resample (sinc, width 6, rolloff 0.99)",
           "crop": "none (whole file)", "normalize": False}
#: The metrics over a generated set and a reference set, and what each needs.
METRICS = {
    "fd": "Frechet distance between the embedders' Gaussians (frames of all clips)",
    "kl": "KL between classifier posteriors of same-named clips (softmax and sigmoid; both directions)",
    "is": "inception score of the generated clips' posteriors (10 splits)",
    "clap": "mean cosine between each generated clip and its prompt (text-audio embedder)",
}


@dataclass
class EvalItem:
    key: str  # file name without extension: how generated and reference clips pair
    path: Path
    text: str | None = None


@dataclass
class AudioSet:
    role: str  # "generated" / "reference"
    source: str
    items: list[EvalItem]
    problems: list[str] = field(default_factory=list)  # listed but unusable entries


def folder_set(folder: str | os.PathLike, role: str) -> AudioSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--{role} {folder}: not a folder")
    manifest = folder / "manifest.jsonl"
    items, problems = [], []
    if manifest.exists():
        found: dict[Path, EvalItem] = {}
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{manifest}:{n}: not JSON ({exc.msg})")
                continue
            name = row.get("file") or row.get("audio") or row.get("path")
            if not name:
                problems.append(f"{manifest}:{n}: no file / audio field")
                continue
            text = row.get("prompt") or row.get("caption") or (row.get("captions") or [None])[0]
            path = Path(name) if Path(name).is_absolute() else folder / name
            found.pop(path, None)  # a file written again (sample --overwrite): its last line describes it
            found[path] = EvalItem(Path(name).stem, path, text)
        items = list(found.values())
    else:
        items = [EvalItem(p.stem, p) for p in sorted(folder.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not items:
        raise UsageError(f"--{role} {folder}: no audio files (nor a manifest.jsonl naming them)")
    return AudioSet(role, str(folder), items, problems)


def recipe_set(recipe: Any, registry: Any, role: str = "reference") -> AudioSet:
    """The recipe's valid split (else its test split) as a reference set."""
    from ..recipe import build

    data = recipe.get("data") or {}
    split = next((s for s in ("valid", "test") if s in data), None)
    if split is None:
        raise UsageError("give --reference DIR: the recipe has no data.valid (nor data.test) split to compare with")
    items = [EvalItem(it.audio.stem, it.audio, it.captions[0]) for it in build(data[split], "dataset", registry)]
    if not items:
        raise UsageError(f"data.{split} of the recipe has no usable item")
    return AudioSet(role, f"data.{split} of {recipe.path}", items)



def default_embedder(registry: Any) -> dict:
    """The embedder of ``tta-run eval`` when neither ``--embedder`` nor the recipe's
    ``eval.embedder`` names one (as when two folders are compared without a recipe): the one a
    plugin registered as the default embedder."""
    from ..errors import UsageError

    name = registry.default("embedder")
    if name is None:
        raise UsageError("name an embedder with --embedder (or the recipe's eval.embedder): no plugin offers a "
                         f"default one. Registered: {', '.join(registry.names('embedder')) or 'none'}")
    return {"type": name}


def spec_of(text: Any) -> dict | None:
    """An embedder given as a name (``clap``) or a YAML mapping with ``type`` (``'{type: panns,
    weights: FILE}'``), as a component node; None for None."""
    import yaml

    from ..recipe import to_plain

    if text is None:
        return None
    value = yaml.safe_load(text) if isinstance(text, str) else to_plain(text)
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise UsageError(f"an embedder is a name or a mapping with a type, e.g. '{{type: panns, weights: FILE}}'; "
                         f"got {text!r}")
    return value


def embedder_from_spec(spec: Mapping[str, Any], registry: Any, device: str | None = None) -> Any:
    """The embedder a node names, built from the registry (on ``device`` when given)."""
    from ..recipe import build

    try:
        embedder = build(spec, "embedder", registry)
    except TypeError as exc:  # an option the embedder does not take
        raise UsageError(f"embedder '{spec['type']}': {exc}") from None
    if device and hasattr(embedder, "to"):
        embedder = embedder.to(device)
    return embedder


# -- loading and embedding ---------------------------------------------------------------------


@dataclass
class Embedded:
    """One set through one embedder: per clip (in item order, unreadable ones left out)."""

    keys: list[str]
    texts: list[str | None]
    frames: list[torch.Tensor]  # [frames, D] per clip
    logits: torch.Tensor | None  # [N, C] for classifiers
    problems: list[str]
    expected: int


def _cache_key(aset: AudioSet, settings: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({"embedder": settings, "loading": LOADING}, sort_keys=True).encode())
    for it in aset.items:
        try:
            st = it.path.stat()
            h.update(f"{it.path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{it.path}|missing\n".encode())
    return h.hexdigest()[:20]


def embed_set(aset: AudioSet, embedder: Any, *, max_missing: float, cache: Path | None = None,
              classify: bool = False) -> Embedded:
    """Load every clip of ``aset`` and embed it (and its logits, with ``classify``)."""
    from ..data.audio import BadAudio, load_clip
    from ..data.config import AudioConfig

    settings = embedder.settings()
    path = None
    if cache is not None:
        path = cache / f"{aset.role}-{embedder.name}-{_cache_key(aset, settings)}.pt"
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not classify or saved["logits"] is not None:
                return Embedded(saved["keys"], saved["texts"], list(saved["frames"]), saved["logits"],
                                list(saved["problems"]), int(saved["expected"]))
    audio = AudioConfig(sample_rate=int(embedder.sample_rate), channels=1, normalize=False, min_duration=0.0)
    keys, texts, frames, logits, problems = [], [], [], [], list(aset.problems)
    for it in aset.items:
        try:
            wave = load_clip(it.path, audio).wave
        except BadAudio as exc:
            problems.append(f"{it.path}: {exc}")
            continue
        with torch.no_grad():
            x = wave[None].float()
            if classify and callable(getattr(embedder, "embed_with_logits", None)):  # one pass for both
                emb, lg = embedder.embed_with_logits(x)
            else:
                emb, lg = embedder.embed(x), (embedder.logits(x) if classify else None)
            frames.append(emb[0].double().cpu())
            if classify:
                logits.append(lg[0].double().cpu())
        keys.append(it.key)
        texts.append(it.text)
    expected = len(aset.items) + len(aset.problems)
    if len(problems) > max_missing * expected:
        raise TtaError(f"{len(problems)} of {expected} {aset.role} clips cannot be used (more than "
                       f"{max_missing:.0%}; --max-missing sets the limit), so nothing is scored:\n  "
                       + "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    out = Embedded(keys, texts, frames, torch.stack(logits) if logits else None, problems, expected)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"keys": keys, "texts": texts, "frames": frames, "logits": out.logits, "problems": problems,
                    "expected": expected}, tmp)
        os.replace(tmp, path)
    return out


# -- metrics -----------------------------------------------------------------------------------


def default_metrics(embedder: Any, text_embedder: Any | None) -> list[str]:
    names = ["fd"]
    if is_classifier(embedder):
        names += ["kl", "is"]
    if text_embedder is not None:
        names.append("clap")
    return names


def check_metrics(names: Sequence[str], embedder: Any, text_embedder: Any | None) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric(s) {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    if any(n in ("kl", "is") for n in names) and not is_classifier(embedder):
        raise UsageError(f"kl and is need a classifier embedder (panns); '{embedder.name}' gives no class posteriors")
    if "clap" in names and (text_embedder is None or not has_text(text_embedder)):
        raise UsageError("the clap metric needs a text-audio embedder: --text-embedder (e.g. "
                         "'{type: clap, pretrained: 630k-audioset-best.pt}') or eval.text_embedder in the recipe")


def compare(generated: AudioSet, reference: AudioSet | None, names: Sequence[str], embedder: Any,
            text_embedder: Any | None = None, *, max_missing: float = 0.05, cache: Path | None = None,
            is_splits: int = 10) -> dict:
    """The metrics ``names`` of ``generated`` (against ``reference`` where they need one)."""
    from . import metrics as M

    check_metrics(names, embedder, text_embedder)
    needs_ref = [n for n in names if n in ("fd", "kl")]
    if needs_ref and reference is None:
        raise UsageError(f"{', '.join(needs_ref)} compare with reference audio: give --reference DIR")
    classify = any(n in ("kl", "is") for n in names)
    gen = embed_set(generated, embedder, max_missing=max_missing, cache=cache, classify=classify)
    ref = embed_set(reference, embedder, max_missing=max_missing, cache=cache, classify="kl" in names) \
        if needs_ref else None
    result: dict[str, Any] = {"metrics": {}, "details": {}}
    if "fd" in names:
        a = M.GaussianStats.empty(gen.frames[0].shape[-1])
        for f in gen.frames:
            a.add(f)
        b = M.GaussianStats.empty(ref.frames[0].shape[-1])
        for f in ref.frames:
            b.add(f)
        if a.n < 2 or b.n < 2:
            raise TtaError(f"fd needs at least 2 embedding rows per set; got {a.n} generated and {b.n} reference")
        result["metrics"]["fd"] = M.frechet_distance_from_stats(a, b)
        result["details"]["fd"] = {"rows": {"generated": a.n, "reference": b.n}, "dim": a.dim}
    if "kl" in names:
        gl = dict(zip(gen.keys, gen.logits))
        rl = dict(zip(ref.keys, ref.logits))
        # exact (eps 0): audioldm_eval adds 1e-6 to the generated side's probabilities, which
        # with 527 classes biases its KL by about -5e-4 (near-identical sets come out negative)
        soft = M.kl_divergence_from_logits(gl, rl, activation="softmax", eps=0.0)
        sig = M.kl_divergence_from_logits(gl, rl, activation="sigmoid", eps=0.0)
        if soft.n_pairs == 0:
            raise TtaError("kl pairs generated and reference clips by file name, and no name is in both sets")
        result["metrics"].update({"kl_softmax": soft.ref_to_gen, "kl_softmax_gen_to_ref": soft.gen_to_ref,
                                  "kl_sigmoid": sig.ref_to_gen, "kl_sigmoid_gen_to_ref": sig.gen_to_ref})
        result["details"]["kl"] = {"pairs": soft.n_pairs, "only_in_generated": soft.only_in_gen[:50],
                                   "only_in_reference": soft.only_in_ref[:50],
                                   "direction": "kl_*: mean over pairs of KL(reference || generated), as audioldm_eval"}
    if "is" in names:
        probs = torch.softmax(gen.logits, dim=-1)
        splits = min(is_splits, probs.shape[0])
        mean, std = M.inception_score(probs, splits=splits, shuffle_seed=2020)
        result["metrics"].update({"is": mean, "is_std": std})
        result["details"]["is"] = {"splits": splits, "shuffle_seed": 2020}
    if "clap" in names:
        cl = embed_set(generated, text_embedder, max_missing=max_missing, cache=cache)
        pairs = [(t, f) for t, f in zip(cl.texts, cl.frames) if t]
        missing = len(cl.texts) - len(pairs)
        if missing > max_missing * max(1, len(cl.texts)):
            raise TtaError(f"{missing} of {len(cl.texts)} generated clips have no prompt in the manifest; "
                           "the clap score needs each clip's text")
        if not pairs:
            raise TtaError("no generated clip has a prompt: the clap score needs a manifest.jsonl with prompts")
        with torch.no_grad():
            text = torch.cat([text_embedder.embed_text([t for t, _ in pairs[i:i + 16]]).double().cpu()
                              for i in range(0, len(pairs), 16)])
        audio_emb = torch.stack([f.mean(0) for _, f in pairs])
        result["metrics"]["clap"] = M.clap_score(text, audio_emb)
        result["details"]["clap"] = {"pairs": len(pairs), "without_prompt": missing,
                                     "embedder": {"name": text_embedder.name, "settings": text_embedder.settings()}}
        gen.problems += [p for p in cl.problems if p not in gen.problems]
    result["counts"] = {"generated": {"expected": gen.expected, "used": len(gen.keys)}}
    if ref is not None:
        result["counts"]["reference"] = {"expected": ref.expected, "used": len(ref.keys)}
    result["not_used"] = {"generated": gen.problems, **({"reference": ref.problems} if ref is not None else {})}
    result["embedder"] = {"name": embedder.name, "settings": embedder.settings(), "loading": LOADING}
    result["sets"] = {"generated": generated.source, **({"reference": reference.source} if reference else {})}
    for value in result["metrics"].values():
        if not math.isfinite(value) and value != math.inf:
            raise TtaError(f"a metric came out {value}; the inputs are broken")
    return result


def table(result: Mapping[str, Any]) -> list[str]:
    """The printed summary of :func:`compare`'s result."""
    lines = [f"{'metric':<24} {'value':>12}"]
    for name, value in result["metrics"].items():
        lines.append(f"{name:<24} {value:>12.4f}")
    counts = ", ".join(f"{role} {c['used']}/{c['expected']}" for role, c in result["counts"].items())
    lines.append(f"embedder {result['embedder']['name']}; clips used {counts}")
    return lines
