"""Tiny audio files for the data tests, written with soundfile (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float = 0.5, sr: int = 16000, freq: float = 440.0, amp: float = 0.3, channels: int = 1,
         seed: int = 0) -> np.ndarray:
    """[N] or [N, channels] float32: a sine plus a little noise (different per channel)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    chans = [amp * np.sin(2 * np.pi * freq * (c + 1) * t) + 0.01 * rng.standard_normal(t.shape) for c in range(channels)]
    data = np.stack(chans, axis=1).astype(np.float32)
    return data[:, 0] if channels == 1 else data


def write_wav(path: Path, data: np.ndarray | None = None, sr: int = 16000, subtype: str | None = None, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(sr=sr, **kw) if data is None else data, sr, subtype=subtype)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def bad_files(root: Path) -> dict[str, Path]:
    """One file per bad-audio rule, named by the reason it must be skipped for."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    (root / "zero_bytes.wav").write_bytes(b"")
    nan = tone(0.5)
    nan[100] = np.nan
    inf = tone(0.5)
    inf[7] = np.inf
    return {
        "unreadable": root / "garbage.wav",
        "unreadable_0b": root / "zero_bytes.wav",
        "empty": write_wav(root / "no_samples.wav", np.zeros(0, dtype=np.float32)),
        "too_short": write_wav(root / "blip.wav", tone(0.05)),
        "non_finite": write_wav(root / "nan.wav", nan, subtype="FLOAT"),
        "non_finite_inf": write_wav(root / "inf.wav", inf, subtype="FLOAT"),
    }
