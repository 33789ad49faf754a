"""Signal measures of generated clips against real ones, label by label: a check on the
adherence classifier that shares nothing with it (nor with the mel the models work in).

    .venv/bin/python bench/bench_signal_measures.py [runs/quickstart/adherence] [more folders]
        [--reference data/sounds/manifest.jsonl] [--per-label 32]

Each folder holds clips named ``<label>-<i>.wav`` (what ``eval --adherence`` writes; by default
the clips of the run ``make demo`` trains). From a
linear-frequency STFT of the waveform (1024 points, hop 10 ms), over the frames within 30 dB
of the clip's loudest (its active frames):

- flatness: the spectral flatness (geometric over arithmetic mean of the power), median over
  active frames: near 0 for tones, near 0.5 and over for noise;
- purity: the share of a frame's power within +-2 bins (+-31 Hz) of its peak, median: 1 for
  a pure tone, low for noise, harmonics or smeared pitch;
- event: the median length of the runs of active frames (within 20 dB of the loudest), in
  seconds: how long a beep, click or note lasts (plus about 50 ms of the window's spread);
- drift: the spread (std, Hz) of the peak frequency over the frames within 10 dB of the
  loudest: 0 for a steady pitch, large for sweeps or a pitch that wanders between repeats.

Printed: each label's median over its clips, generated next to real (real clips cut to the
generated clips' length, from their middle) and to the same real clips through the log-mel
and Griffin-Lim as the quickstart renders them (``real+gl``: what the vocoder alone costs; a
generated clip can at best match that row). The real clips come from ``--reference``
(``--per-label`` of each label).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
N_FFT, HOP = 1024, 160
MEASURES = ("flatness", "purity", "event", "drift")


def measures(wave: np.ndarray, rate: int) -> dict[str, float]:
    """The four measures of one mono clip."""
    window = np.hanning(N_FFT)
    wave = np.pad(wave.astype(np.float64), (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT)[::HOP] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    energy = 10 * np.log10(power.sum(1))
    active = energy > energy.max() - 30
    flat = np.exp(np.log(power).mean(1)) / power.mean(1)
    peak = power.argmax(1)
    bins = np.arange(power.shape[1])
    near = np.abs(bins[None, :] - peak[:, None]) <= 2
    purity = (power * near).sum(1) / power.sum(1)
    edges = np.diff(np.concatenate([[0], (energy > energy.max() - 20).astype(int), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)  # lengths of the loud runs
    steady = energy > energy.max() - 10
    hz = peak[steady] * rate / N_FFT
    return {"flatness": float(np.median(flat[active])), "purity": float(np.median(purity[active])),
            "event": float(np.median(runs)) * HOP / rate, "drift": float(hz.std())}


def _label(path: Path) -> str:
    return path.stem.rsplit("-", 1)[0]


def _table(folder: Path) -> tuple[dict[str, list[dict]], float]:
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such folder (`make demo` writes runs/quickstart/adherence)")
    by_label: dict[str, list[dict]] = {}
    seconds = []
    for path in sorted(folder.glob("*.wav")):
        wave, rate = sf.read(path, always_2d=True)
        seconds.append(wave.shape[0] / rate)
        by_label.setdefault(_label(path), []).append(measures(wave.mean(1), rate))
    if not by_label:
        raise SystemExit(f"{folder}: no <label>-<i>.wav clips")
    return by_label, statistics.median(seconds)


def _griffin_lim(seconds: float):
    """The quickstart's rendering of a mel: its log-mel, then Griffin-Lim at 32 iterations."""
    import torch

    from tta_core.data.config import AudioConfig
    from tta_core.data.mel import log_mel
    from tta_audioldm.vocoders import GriffinLim

    audio = AudioConfig(duration=seconds)
    vocoder = GriffinLim(n_iter=32, audio=audio)

    def render(waves: list[np.ndarray]) -> list[np.ndarray]:  # one batch: one pass of the iterations
        with torch.no_grad():
            batch = torch.from_numpy(np.stack(waves)).float()
            return list(vocoder(log_mel(batch, audio)).numpy())

    return render


def _reference(manifest: Path, labels: set[str], per_label: int, seconds: float) -> tuple[dict, dict]:
    clips: dict[str, list[np.ndarray]] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        label = row.get("label")
        if label not in labels or len(clips.get(label, [])) >= per_label:
            continue
        wave, rate = sf.read(manifest.parent / row["audio"], always_2d=True)
        n = int(round(seconds * rate))
        start = max(0, (wave.shape[0] - n) // 2)
        clips.setdefault(label, []).append(np.pad(wave[start:start + n].mean(1), (0, max(0, n - wave.shape[0]))))
    render = _griffin_lim(seconds)
    real = {label: [measures(c, rate) for c in waves] for label, waves in clips.items()}
    rendered = {label: [measures(c, rate) for c in render(waves)] for label, waves in clips.items()}
    return real, rendered


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", type=Path, default=[REPO / "runs/quickstart/adherence"])
    p.add_argument("--reference", type=Path, default=REPO / "data/sounds/manifest.jsonl")
    p.add_argument("--per-label", type=int, default=32)
    args = p.parse_args(argv)
    tables = [(folder, *_table(folder)) for folder in args.folders]
    labels = set().union(*(t[1] for t in tables))
    real, rendered = _reference(args.reference, labels, args.per_label, tables[0][2])
    head = "".join(f"{m:>10}" for m in MEASURES)
    print(f"{'label':<15}{head}  clips")
    for label in sorted(labels):
        rows = [("real", real.get(label, [])), ("real+gl", rendered.get(label, []))] + [(str(f), t.get(label, [])) for f, t, _ in tables]
        for name, clips in rows:
            if clips:
                cells = "".join(f"{_median(clips, m):>10.3f}" for m in MEASURES)
                print(f"{label:<15}{cells}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
