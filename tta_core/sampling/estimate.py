"""The memory check before a generation: a batch's peak estimated on fake tensors
(:mod:`tta_core.memory`), refused when the device has less free."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import torch

from ..diffusion.guidance import guided_denoiser
from ..interfaces import unconditional
from .settings import SampleSettings, SettingError

if TYPE_CHECKING:
    from .pipeline import Pipeline

#: What a process really grows by, over the tensors memory_needed counts: allocator
#: rounding and the libraries' scratch buffers (a quickstart generation of 60-120 s on a CPU
#: grew by 1.8-1.9 times the count).
MEMORY_MARGIN = 2.0


def memory_needed(pipe: "Pipeline", st: SampleSettings, count: int) -> int | None:
    """Bytes one batch of ``count`` outputs (at most ``st.batch_size``) needs at its peak
    beyond the loaded weights: the larger of a guided denoiser call and the decoding
    (autoencoder, then vocoder), plus the batch's audio. Estimated on fake tensors; a vocoder
    whose code needs the data (Griffin-Lim's inverse STFT checks its window) is measured for
    real on 16 frames and scaled to the length, as a vocoder's memory grows in proportion to
    it. None when a part cannot be estimated."""
    from ..memory import Spec, measured_bytes, peak_bytes, unchanged

    b = max(1, min(st.batch_size, count))
    length = pipe.length_for(st.duration)
    shape = (b, *pipe.autoencoder.latent_shape(length))
    kwargs = {} if st.decode_steps is None else {"steps": int(st.decode_steps)}
    parts = [p for p in (pipe.conditioner, pipe.denoiser, pipe.process, pipe.autoencoder, pipe.vocoder) if p is not None]
    device = pipe.device
    with torch.no_grad(), unchanged(*parts):
        cond = pipe.conditioner.encode_text(["a"] * b).to(device)
        uncond = unconditional(pipe.denoiser, pipe.conditioner)(b).to(device) if st.guidance.active else None
        denoise = guided_denoiser(pipe.process, pipe.network(), cond, uncond, st.guidance)
        level = Spec((b,), device=device)
        steps = peak_bytes(denoise, Spec(shape, device=device), level, level)
        decode = peak_bytes(lambda z: pipe.autoencoder.decode(z, **kwargs), Spec(shape, device=device))
        if decode is not None and pipe.autoencoder.domain == "mel":
            mel = (b, 1, length, pipe.audio.mel.n_mels)
            vocode = peak_bytes(pipe.vocoder, Spec(mel, device=device))
            if vocode is None:
                short = min(length, 16)
                probe = torch.full((1, 1, short, mel[3]), -5.0, device=device)  # a quiet log-mel
                vocode = measured_bytes(pipe.vocoder, probe) * b * length // short
            decode = max(decode, vocode) + 4 * math.prod(mel)
    if steps is None or decode is None:
        return None
    audio = b * pipe.audio.channels * int(round(st.duration * pipe.sample_rate)) * 4
    return max(steps, decode) + audio


def check_memory(pipe: "Pipeline", st: SampleSettings, count: int) -> None:
    """Refuse (SettingError) a generation whose batch needs more memory than the device has
    free, saying the estimate; a warning when it needs more than half of it. The estimate
    is :func:`memory_needed` times MEMORY_MARGIN."""
    from ..memory import available_bytes, format_bytes

    need, have = pipe.memory_needed(st, count), available_bytes(pipe.device)
    if need is None or have is None:
        return
    need = int(need * MEMORY_MARGIN)
    b = max(1, min(st.batch_size, count))
    what = (f"a batch of {b} output(s) of {st.duration:g} s needs about {format_bytes(need)} at its peak "
            f"(estimated), and {pipe.device.type} memory has {format_bytes(have)} free")
    if need > have:
        raise SettingError(what.replace("{", "{{").replace("}", "}}")
                           + ": lower {duration} or {batch_size}, or run it anyway with {skip_memory_check}")
    if need > have / 2:
        print(f"warning: {what}", file=sys.stderr)
