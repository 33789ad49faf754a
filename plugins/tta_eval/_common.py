"""What the embedders share: the resampler their callers use, weights files (where, their
hash, or a reproducible random initialisation), input checks, and the frozen base module."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Iterator

import torch

from tta_core.plugin import CheckpointError, TtaError, UsageError

#: How a caller brings audio to an embedder's rate: torchaudio.functional.resample with its
#: defaults (a Hann-windowed sinc, not Kaiser). Part of every embedder's settings().
RESAMPLER = {"function": "torchaudio.functional.resample", "resampling_method": "sinc_interp_hann",
             "lowpass_filter_width": 6, "rolloff": 0.99}
#: The channel policy of every embedder: they take one channel.
MONO = "mono: the caller averages the channels before embed"
#: The seed of ``random: true`` weights, so that untrained embedders (tests) agree run to run.
RANDOM_SEED = 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def choose_weights(who: str, path: str | None, random: bool, *, option: str, download: str) -> Path | None:
    """The weights file to load (absolute), or None for ``random: true``; every other
    combination is an error that says what to do. Never downloads."""
    if path is None:
        if not random:
            raise UsageError(f"{who}: no {option}: given. Metrics need trained weights: {download}, and set "
                             f"{option}: to the local file. (random: true builds untrained weights, for tests only.)")
        return None
    if random:
        raise UsageError(f"{who}: {option}: {path} and random: true exclude each other; drop random: to use the file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"{who}: no weights file at {file}: {download}, and set {option}: to where it is. "
                              "tta never downloads weights.")
    return file.resolve()


def weights_setting(file: Path | None) -> dict[str, str] | str:
    """What settings() says about the weights: the file and its sha256, or how random ones were made."""
    if file is None:
        return f"random (torch.manual_seed({RANDOM_SEED}), torch {torch.__version__})"
    return {"file": str(file), "sha256": sha256_of(file)}


@contextlib.contextmanager
def seeded(enabled: bool = True) -> Iterator[None]:
    """Random initialisation under :data:`RANDOM_SEED`, leaving the caller's RNG as it was."""
    if not enabled:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


def check_wave(who: str, wave: Any, sample_rate: int, min_samples: int) -> torch.Tensor:
    """A mono float wave [B, N] with N >= min_samples, or a ValueError saying what is wrong."""
    if not isinstance(wave, torch.Tensor) or wave.dim() != 2 or not wave.is_floating_point():
        got = f"shape {tuple(wave.shape)} {wave.dtype}" if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise ValueError(f"{who}: embed takes a float wave [B, N], mono at {sample_rate} Hz; got {got}")
    if wave.shape[-1] < min_samples:
        raise ValueError(f"{who}: a clip needs at least {min_samples} samples ({min_samples / sample_rate:.3f} s at "
                         f"{sample_rate} Hz), got {wave.shape[-1]}")
    return wave


class FrozenEmbedder(torch.nn.Module):
    """Built in eval mode with gradients off, and kept so: ``train()`` is refused, because
    dropout or batch statistics would change the numbers a metric is computed from."""

    name = "embedder"

    def freeze(self, device: str | torch.device) -> None:
        self.to(device)
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenEmbedder":
        if mode:
            raise TtaError(f"{self.name}: an embedder only runs in eval mode (train() would change its outputs)")
        return super().train(False)

    def as_input(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave`` on the embedder's device, in its float dtype (float32 unless moved)."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return wave.to(device=t.device, dtype=t.dtype)
        return wave.float()
