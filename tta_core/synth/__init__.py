"""Synthetic captioned sound sets, generated with numpy: data for tests, demos and smoke
training without downloads (``tta-run synth sounds|birds --out DIR``).

A set is ``DIR/audio/<id>.wav`` (16-bit mono WAV) plus ``DIR/manifest.jsonl`` in the format
the ``jsonl`` dataset reads (``id``, ``audio``, ``caption``, ``label`` and each clip's
generation parameters). Clip ``i`` depends only on ``(seed, i)``: the same seed writes the same
bytes, and a larger ``n`` extends a set without changing its first clips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import birds, sounds

SETS = {"sounds": sounds, "birds": birds}


def labels_of(kind: str) -> tuple[str, ...]:
    """Every label set ``kind`` can make (its default ones first)."""
    module = SETS[kind]
    return getattr(module, "ALL_LABELS", module.LABELS)


def write_set(kind: str, out: str | os.PathLike, n: int, seed: int = 0, duration: float = 2.0,
              sample_rate: int = 16000, labels: list[str] | tuple[str, ...] | None = None) -> Path:
    """Write ``n`` clips of set ``kind`` under ``out``, balanced over ``labels`` (default: the
    set's default labels); returns the manifest's path."""
    import soundfile as sf

    if kind not in SETS:
        raise ValueError(f"unknown synthetic set '{kind}'; sets: {', '.join(SETS)}")
    if n < 1 or duration <= 0:
        raise ValueError(f"need n >= 1 and duration > 0, got n={n}, duration={duration}")
    options = {}
    if labels is not None:
        unknown = [label for label in labels if label not in labels_of(kind)]
        if unknown or not labels or len(set(labels)) != len(labels):
            raise ValueError(f"--labels takes distinct labels of the {kind} set, comma-separated "
                             f"({', '.join(labels_of(kind))}); got {', '.join(labels) or 'none'}")
        options["labels"] = tuple(labels)
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        wave, fields = SETS[kind].make(i, seed, int(round(duration * sample_rate)), sample_rate, **options)
        clip_id = f"{kind}-{i:05d}"
        rel = f"audio/{clip_id}.wav"
        sf.write(str(out / rel), wave, sample_rate, subtype="PCM_16", format="WAV")
        fields = {k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}
        lines.append(json.dumps({"id": clip_id, "audio": rel, **fields}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
