"""Small numpy building blocks shared by the synthetic sets."""

from __future__ import annotations

import numpy as np


def sweep(f0: float, f1: float, n: int, sr: int, shape: str = "exp") -> np.ndarray:
    """[n] instantaneous frequency (Hz) from f0 to f1, exponential (even in pitch) or linear."""
    u = np.linspace(0.0, 1.0, n, endpoint=False)
    return f0 * (f1 / f0) ** u if shape == "exp" else f0 + (f1 - f0) * u


def oscillator(freq: np.ndarray | float, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """[n] sine following ``freq`` (Hz, a constant or [n]); phase is integrated so sweeps stay smooth."""
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return np.sin(phase + 2 * np.pi * np.cumsum(f) / sr)


def fades(n: int, sr: int, attack: float = 0.01, release: float = 0.01) -> np.ndarray:
    """[n] envelope with raised-cosine fade in/out, so clips start and end without clicks."""
    env = np.ones(n)
    for length, sl in ((min(n // 2, int(attack * sr)), slice(None)), (min(n // 2, int(release * sr)), slice(None, None, -1))):
        if length > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)
            env[sl][:length] *= ramp
    return env


def finish(wave: np.ndarray, rng: np.random.Generator, floor_db: tuple[float, float] = (-55, -40),
           peak: tuple[float, float] = (0.3, 0.9)) -> tuple[np.ndarray, float]:
    """Scale to a random peak and add a faint noise floor; returns (float32 wave, peak)."""
    level = float(rng.uniform(*peak))
    wave = wave / (np.abs(wave).max() + 1e-12) * level
    wave = wave + rng.standard_normal(wave.shape[0]) * level * 10 ** (rng.uniform(*floor_db) / 20)
    return np.clip(wave, -1.0, 1.0).astype(np.float32), level
