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


#: Where a run keeps the estimates (``<run dir>/cache/``): one per graph and batch shape
ESTIMATES_FILE = "sample-memory.json"


def memory_needed(pipe: "Pipeline", st: SampleSettings, count: int) -> int | None:
    """Bytes one batch of ``count`` outputs (at most ``st.batch_size``) needs at its peak
    beyond the loaded weights: the larger of a guided denoiser call and the decoding
    (autoencoder, then vocoder), plus the batch's audio. Estimated on fake tensors; a vocoder
    whose code needs the data (Griffin-Lim's inverse STFT checks its window) is measured for
    real on 16 frames and scaled to the length, as a vocoder's memory grows in proportion to
    it. None when a part cannot be estimated.

    An estimate depends only on the graph (its components' nodes, their plugins' versions,
    the adapters), the batch's shape and the settings that change the calls, never on the
    weights' values: it is kept in the run's ``cache/sample-memory.json`` under a hash of
    those and read back the next time (a few seconds at AudioLDM's size). A run folder that
    cannot be written to only means the estimate is made again."""
    b = max(1, min(st.batch_size, count))
    key, kept = _estimate_key(pipe, st, b), _read_estimates(pipe)
    if isinstance(kept.get(key), int):
        return kept[key]
    need = _estimate(pipe, st, b)
    if need is not None:
        _write_estimates(pipe, {**kept, key: int(need)})
    return need


def _estimate_key(pipe: "Pipeline", st: SampleSettings, b: int) -> str:
    from .. import __version__
    from ..data.cache import digest
    from ..recipe import component_kind
    from ..yamlio import to_plain

    def origin(name: str) -> str:
        entry = pipe.registry.get(component_kind(pipe.recipe, name, pipe.registry), pipe.recipe.components[name]["type"])
        return f"{entry.origin.distribution} {entry.origin.version}"

    names = sorted(pipe.roles.values())
    what = {
        "components": {n: to_plain(pipe.recipe.components[n]) for n in names},
        "plugins": {n: origin(n) for n in names},
        "adapters": {n: list(w.adapters) for n, w in sorted(pipe.weights.items())},
        "latent": list(pipe.autoencoder.latent_shape(pipe.length_for(st.duration))), "batch": b,
        "samples": int(round(st.duration * pipe.sample_rate)), "channels": pipe.audio.channels,
        "guidance": bool(st.guidance.active), "decode_steps": st.decode_steps,
        "device": pipe.device.type, "precision": pipe.precision, "torch": torch.__version__, "tta": __version__,
    }
    return digest(what)


def _estimates_path(pipe: "Pipeline"):
    return None if pipe.run_dir is None else pipe.run_dir / "cache" / ESTIMATES_FILE


def _read_estimates(pipe: "Pipeline") -> dict:
    import json

    path = _estimates_path(pipe)
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):  # unreadable or damaged: estimated again, and rewritten
        return {}
    return data if isinstance(data, dict) else {}


def _write_estimates(pipe: "Pipeline", estimates: dict) -> None:
    import json

    from ..checkpoint import atomic_write

    path = _estimates_path(pipe)
    if path is None or not path.parent.parent.is_dir():
        return
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, json.dumps(estimates, indent=1, sort_keys=True))
    except OSError:  # a read-only run folder: nothing kept
        pass


def _estimate(pipe: "Pipeline", st: SampleSettings, b: int) -> int | None:
    from ..memory import Spec, measured_bytes, peak_bytes, unchanged

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
