"""Writing what a person listens to and looks at: audio files and spectrogram pictures.

Shared by ``tta-run sample``, training validation and any plugin that writes clips (an
objective's ``validate``), so every one of them writes the same formats. Heavy libraries
(soundfile, matplotlib, torch) are imported on first use.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

#: soundfile subtypes that store integers: samples outside [-1, 1] would wrap around, so
#: they are clipped first (float subtypes keep them, for whoever wants the headroom).
_INTEGER_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32")


def write_audio(path: str | os.PathLike, wave: Any, sample_rate: int, *, subtype: str = "PCM_16",
                format: str | None = None) -> None:
    """Write ``wave`` ([N] mono or [C, N], a tensor or array in [-1, 1]) as an audio file.

    ``subtype``/``format`` are soundfile's (default 16-bit PCM; the format is taken from the
    file's extension unless given, which a temporary name such as ``.x.tmp.wav`` needs).
    Integer subtypes clip to [-1, 1]; ``FLOAT`` keeps the values as they are.
    """
    import numpy as np
    import soundfile

    data = wave.detach().float().cpu().numpy() if hasattr(wave, "detach") else np.asarray(wave, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"write_audio takes a wave [N] or [C, N], got shape {tuple(data.shape)}")
    if subtype.upper() in _INTEGER_SUBTYPES:
        data = np.clip(data, -1.0, 1.0)
    soundfile.write(path, data.T if data.ndim == 2 else data, sample_rate, subtype=subtype, format=format)


def save_spectrogram(path: str | os.PathLike, wave: Any, sample_rate: int, audio: Any, title: str) -> None:
    """A PNG of the log-mel of ``wave`` ([N], or [C, N] mixed to mono for the picture), the
    training mel of ``audio`` (an ``AudioConfig``; ``tta_core.data.mel``) at ``sample_rate``,
    titled ``title`` (the prompt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.mel import log_mel

    if wave.ndim == 2:
        wave = wave.mean(0)
    if audio.sample_rate != sample_rate:  # a vocoder at another rate than the recipe's audio
        audio = dataclasses.replace(audio, sample_rate=sample_rate)
    wave = wave.detach().float().cpu()
    mel = log_mel(wave[None], audio)[0, 0].T  # [F, T]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", extent=(0, wave.numel() / sample_rate, 0, mel.shape[0]))
    ax.set_title(title if len(title) <= 90 else title[:87] + "...", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel band")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
