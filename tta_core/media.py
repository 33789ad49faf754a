"""Writing what a person listens to and looks at: audio files and spectrogram pictures.

Shared by ``tta-run sample``, training validation and any plugin that writes clips (an
objective's ``validate``), so every one of them writes the same formats. Heavy libraries
(soundfile, Pillow, torch) are imported on first use.
"""

from __future__ import annotations

import dataclasses
import functools
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


#: viridis (matplotlib's default colormap) as a degree-6 polynomial per channel, from 0 to 1
_VIRIDIS = (
    (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
    (0.1050930431085774, 1.404613529898575, 1.384590162594685),
    (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
    (-4.634230498983486, -5.799100973351585, -19.33244095627987),
    (6.228269936347081, 14.17993336680509, 56.69055260068105),
    (4.776384997670288, -13.74514537774601, -65.35303263337234),
    (-5.435455855934631, 4.645852612178535, 26.3124352495832),
)
_SIZE, _LEFT, _RIGHT, _TOP, _BOTTOM = (640, 240), 52, 12, 22, 38  # pixels: the picture and its margins


def _nice_step(span: float, most: int) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that puts at most ``most`` ticks on ``span``."""
    import math

    if span <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(span / most))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if span / (m * base) <= most)


def _ticks(span: float, most: int) -> list[float]:
    step = _nice_step(span, most)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


@functools.lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=11)


def _label(value: float) -> str:
    return f"{value:g}" if abs(value - round(value, 2)) < 1e-9 else f"{value:.2f}"


def save_spectrogram(path: str | os.PathLike, wave: Any, sample_rate: int, audio: Any, title: str) -> None:
    """A PNG of the log-mel of ``wave`` ([N], or [C, N] mixed to mono for the picture), the
    training mel of ``audio`` (an ``AudioConfig``; ``tta_core.data.mel``) at ``sample_rate``,
    titled ``title`` (the prompt): 640 x 240 pixels, viridis from the quietest value to the
    loudest, time across in seconds and mel bands up, drawn with Pillow."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .data.mel import log_mel

    if wave.ndim == 2:
        wave = wave.mean(0)
    if audio.sample_rate != sample_rate:  # a vocoder at another rate than the recipe's audio
        audio = dataclasses.replace(audio, sample_rate=sample_rate)
    wave = wave.detach().float().cpu()
    mel = log_mel(wave[None], audio)[0, 0].T.numpy().astype(np.float64)  # [F, T]
    lo, hi = float(mel.min()), float(mel.max())
    x = (mel - lo) / (hi - lo) if hi > lo else np.zeros_like(mel)
    rgb = np.zeros((*x.shape, 3))
    for c in reversed(_VIRIDIS):  # Horner's rule
        rgb = rgb * x[..., None] + np.asarray(c)
    pixels = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)[::-1]  # band 0 at the bottom

    width, height = _SIZE
    box = (_LEFT, _TOP, width - _RIGHT, height - _BOTTOM)  # the plot's left, top, right, bottom
    canvas = Image.new("RGB", _SIZE, "white")
    plot = Image.fromarray(pixels, "RGB").resize((box[2] - box[0], box[3] - box[1]), Image.BILINEAR)
    canvas.paste(plot, box[:2])
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), outline="black")
    seconds, bands = wave.numel() / sample_rate, mel.shape[0]
    for t in _ticks(seconds, 8):
        px = box[0] + round(t / seconds * (box[2] - box[0])) if seconds else box[0]
        draw.line((px, box[3], px, box[3] + 3), fill="black")
        draw.text((px, box[3] + 5), _label(t), fill="black", font=font, anchor="mt")
    for b in _ticks(bands, 6):
        py = box[3] - round(b / bands * (box[3] - box[1]))
        draw.line((box[0] - 4, py, box[0] - 1, py), fill="black")
        draw.text((box[0] - 6, py), _label(b), fill="black", font=font, anchor="rm")
    draw.text(((box[0] + box[2]) // 2, height - 4), "seconds", fill="black", font=font, anchor="md")
    side = Image.new("RGB", (box[3] - box[1], 14), "white")
    ImageDraw.Draw(side).text((side.width // 2, 7), "mel band", fill="black", font=font, anchor="mm")
    canvas.paste(side.rotate(90, expand=True), (4, box[1]))
    text = title if len(title) <= 90 else title[:87] + "..."
    draw.text(((box[0] + box[2]) // 2, _TOP // 2), text, fill="black", font=font, anchor="mm")
    canvas.save(path, format="PNG")
