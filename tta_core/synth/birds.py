"""Bird-like calls of five invented species, told apart by pitch range, sweep shape, trill
rate (notes per second inside a call; 0 for one continuous note) and call count.

The manifest keeps the parameters that distinguish species (``pitch_hz``, ``trill_rate``,
``call_count``, ``sweep``, ``call_s``) so a test can check that generated calls differ in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dsp import fades, finish, oscillator, sweep


@dataclass(frozen=True)
class Species:
    pitch: tuple[float, float]  # mean fundamental, Hz
    sweep: str  # flat | down | up | warble
    trill: tuple[float, float]  # notes per second within a call; (0, 0): one continuous note
    calls: tuple[int, int]  # inclusive range of calls per clip
    call_s: tuple[float, float]  # seconds per call
    captions: tuple[str, ...]


SPECIES: dict[str, Species] = {
    "silver_warbler": Species((5000, 6500), "flat", (18, 28), (1, 2), (0.5, 0.8), (
        "a high thin trill of the silver warbler", "the silver warbler's rapid high trill",
        "a silver warbler trilling")),
    "river_thrush": Species((1200, 2000), "down", (0, 0), (2, 3), (0.25, 0.4), (
        "the low whistled downslur of the river thrush", "a river thrush whistling falling notes",
        "a river thrush calling")),
    "copper_finch": Species((2500, 3800), "up", (0, 0), (4, 7), (0.06, 0.12), (
        "bright rising chirps of the copper finch", "a copper finch chirping upward",
        "several quick chirps from a copper finch")),
    "dusk_dove": Species((450, 750), "flat", (0, 0), (2, 4), (0.25, 0.4), (
        "soft low hoots of the dusk dove", "a dusk dove cooing", "the gentle hooting of a dusk dove")),
    "ember_wren": Species((3500, 4500), "warble", (0, 0), (1, 2), (0.5, 0.8), (
        "the warbling song of the ember wren", "an ember wren warbling", "a wavering song from an ember wren")),
}
LABELS = tuple(SPECIES)


def _call(sp: Species, pitch: float, trill: float, m: int, sr: int, rng) -> np.ndarray:
    """One call of ``m`` samples."""
    if sp.sweep == "down":
        f = sweep(pitch * 1.25, pitch * 0.75, m, sr)
    elif sp.sweep == "up":
        f = sweep(pitch * 0.7, pitch * 1.3, m, sr)
    elif sp.sweep == "warble":  # fast vibrato around the pitch
        f = pitch + 400 * np.sin(2 * np.pi * rng.uniform(10, 14) * np.arange(m) / sr)
    else:
        f = np.full(m, pitch)
    tone = oscillator(f, m, sr) + 0.15 * oscillator(2 * f, m, sr) * (f.max() * 2 < sr / 2)
    env = fades(m, sr, 0.01, 0.03)
    if trill > 0:  # the call is a train of short notes
        phase = (np.arange(m) / sr * trill) % 1.0
        env = env * np.where(phase < 0.55, np.sin(np.pi * phase / 0.55), 0.0)
    return tone * env


def make(index: int, seed: int, n: int, sr: int, labels: tuple[str, ...] = LABELS) -> tuple[np.ndarray, dict]:
    """Clip ``index`` of the set for ``seed``: (float32 wave [n], manifest fields)."""
    rng = np.random.default_rng([seed, index])
    label = labels[index % len(labels)]
    sp = SPECIES[label]
    pitch = float(rng.uniform(*sp.pitch))
    trill = float(rng.uniform(*sp.trill)) if sp.trill[1] > 0 else 0.0
    count = int(rng.integers(sp.calls[0], sp.calls[1] + 1))
    lengths = rng.uniform(*sp.call_s, count)
    gaps = rng.uniform(0.08, 0.25, count + 1)
    total = lengths.sum() + gaps.sum()
    if total > n / sr:  # a short clip: shrink calls and gaps together so all of them fit
        lengths, gaps = lengths * n / sr / total, gaps * n / sr / total
    wave = np.zeros(n)
    t = gaps[0]
    for length, gap in zip(lengths, gaps[1:]):
        start, m = int(t * sr), int(length * sr)
        m = min(m, n - start)
        if m > 0:
            wave[start:start + m] += _call(sp, pitch, trill, m, sr, rng)
        t += length + gap
    wind = np.convolve(rng.standard_normal(n), np.ones(64) / 64, mode="same")  # low rumble
    wave = wave + wind * rng.uniform(0.02, 0.06) * 8
    wave, level = finish(wave, rng)
    caption = sp.captions[int(rng.integers(len(sp.captions)))]
    return wave, {"caption": caption, "label": label, "species": label, "pitch_hz": pitch, "trill_rate": trill,
                  "call_count": count, "call_s": float(lengths.mean()), "sweep": sp.sweep, "peak": level}
