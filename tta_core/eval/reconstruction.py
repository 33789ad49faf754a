"""The autoencoder's (and vocoder's) round trip on held-out clips: ``tta-run RECIPE eval
--reconstruction``.

Each clip of the recipe's valid split (``data.valid``, else ``data.test``), loaded as training
loads it and cut to the recipe's duration from its start, goes through the trained
autoencoder, and for mel autoencoders through the vocoder:

- mel autoencoders: log-mel -> latent -> log-mel -> vocoder -> wave. Mel metrics (``mel_l1``,
  ``psnr``, ``ssim``) compare the decoded log-mel with the input's; wave metrics (``lsd``,
  ``si_sdr``, ``pesq``) the vocoded wave with the clip. A ``vocoder`` row gives the vocoder
  alone on the input's log-mel, so the two parts' shares can be told apart.
- waveform autoencoders: wave -> latent -> wave (decoded with ``--decode-steps`` and the
  recipe's sampler); mel metrics on the log-mels of both waves.

``lsd`` is on the power spectrogram of the recipe's STFT (its n_fft, hop, Hann window);
``pesq`` (wide band, resampled to 16 kHz) is for speech-like material and only when asked
for: it is meaningless on most sound effects.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Sequence

import torch

from ..errors import TtaError, UsageError

MEL_METRICS = ("mel_l1", "psnr", "ssim")
WAVE_METRICS = ("lsd", "si_sdr", "pesq")
DEFAULT = ("mel_l1", "psnr", "ssim", "lsd", "si_sdr")


def _power(wave: torch.Tensor, audio: Any) -> torch.Tensor:
    """[B, N] -> |STFT|^2 [B, T, F] with the recipe's STFT."""
    m = audio.mel
    spec = torch.stft(wave.double(), m.n_fft, m.hop, m.win, torch.hann_window(m.win, dtype=torch.float64),
                      return_complex=True)
    return spec.abs().pow(2).transpose(1, 2)


def _score(names: Sequence[str], mel: torch.Tensor, mel_hat: torch.Tensor | None, wave: torch.Tensor,
           wave_hat: torch.Tensor | None, audio: Any) -> dict[str, torch.Tensor]:
    from . import metrics as M

    out = {}
    if mel_hat is not None:
        frames = min(mel.shape[2], mel_hat.shape[2])
        a, b = mel[:, 0, :frames].double(), mel_hat[:, 0, :frames].double()
        for name, fn in (("mel_l1", M.mel_l1), ("psnr", M.psnr), ("ssim", M.ssim)):
            if name in names:
                out[name] = fn(a, b)
    if wave_hat is not None:
        n = min(wave.shape[-1], wave_hat.shape[-1])
        w, w_hat = wave[..., :n].double(), wave_hat[..., :n].double()
        if "lsd" in names:
            out["lsd"] = M.lsd(_power(w, audio), _power(w_hat, audio))
        if "si_sdr" in names:
            out["si_sdr"] = M.si_sdr(w, w_hat)
        if "pesq" in names:
            out["pesq"] = M.pesq_wb(w, w_hat, audio.sample_rate)
    return out


def _check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in MEL_METRICS + WAVE_METRICS]
    if unknown:
        raise UsageError(f"unknown reconstruction metric(s) {', '.join(unknown)}: "
                         f"choose from {', '.join(MEL_METRICS + WAVE_METRICS)}")


def _load(items: Sequence[Any], audio: Any, max_missing: float, progress: bool) -> tuple[list, list[str]]:
    """Each item's clip as training loads it, cut to the recipe's duration from its start, and
    what could not be read; an error when more than ``max_missing`` of them, or all, cannot."""
    from ..data.audio import BadAudio, fit, load_clip
    from ..progress import Progress

    waves, problems = [], []
    with Progress(len(items), "reconstruction: load", "clips", disable=not progress) as bar:
        for item in items:
            try:
                waves.append(fit(load_clip(item.audio, audio).wave, audio))
            except BadAudio as exc:
                problems.append(f"{item.audio}: {exc}")
            bar.update()
    if len(problems) > max_missing * max(1, len(items)):
        raise TtaError(f"{len(problems)} of {len(items)} clips cannot be read (more than {max_missing:.0%}):\n  "
                       + "\n  ".join(problems[:20]))
    if not waves:
        raise TtaError("no clip to reconstruct")
    return waves, problems


def reconstruction(pipe: Any, items: Sequence[Any], names: Sequence[str], *, batch_size: int = 8,
                   decode_steps: int | None = None, max_missing: float = 0.05, progress: bool = True) -> dict:
    """Mean of each metric over ``items`` (dataset items) through ``pipe`` (a loaded Pipeline).
    ``progress``: report loading and the round trip (a bar on a terminal, lines elsewhere)."""
    from ..data.audio import with_channels
    from ..data.mel import log_mel
    from ..progress import Progress

    _check_names(names)
    audio, ae = pipe.audio, pipe.autoencoder
    mono_audio = audio if audio.channels == 1 else dataclasses.replace(audio, channels=1)
    waves, problems = _load(items, audio, max_missing, progress)
    per: dict[str, list[torch.Tensor]] = {}
    vocoder_only: dict[str, list[torch.Tensor]] = {}
    device = pipe.device
    sampling: dict[str, Any] = {"steps": int(decode_steps)} if decode_steps else {}
    if ae.domain == "waveform" and "generator" in inspect.signature(ae.decode).parameters:
        sampling["generator"] = torch.Generator(device="cpu").manual_seed(0)  # the same noise every run
    steps = "encode, decode" + (", vocode" if getattr(pipe, "vocoder", None) is not None else "")
    bar = Progress(len(waves), f"reconstruction: {steps}", "clips", disable=not progress)
    with torch.no_grad(), bar:
        for i in range(0, len(waves), batch_size):
            wave = torch.stack(waves[i:i + batch_size]).to(device)
            if audio.channels > 1:  # the metrics read the mono mix
                flat = wave.mean(dim=-2)
            else:
                flat = wave
            mel = log_mel(flat.float(), mono_audio)
            if ae.domain == "mel":
                mel_hat = ae.decode(ae.encode(log_mel(wave.float(), audio)))
                wave_hat = pipe.vocoder(mel_hat) if pipe.vocoder is not None else None
                if pipe.vocoder is not None:
                    for k, v in _score([n for n in names if n in WAVE_METRICS], mel, None, flat,
                                       pipe.vocoder(mel), audio).items():
                        vocoder_only.setdefault(k, []).append(v.cpu())
            else:
                decoded = ae.decode(ae.encode(with_channels(wave.float())), **sampling)
                wave_hat = decoded[..., : wave.shape[-1]]
                wave_hat = wave_hat.mean(dim=1) if wave_hat.ndim == 3 else wave_hat
                mel_hat = log_mel(wave_hat.float(), mono_audio)
            for k, v in _score(names, mel, mel_hat, flat, wave_hat, mono_audio).items():
                per.setdefault(k, []).append(v.cpu())
            bar.update(wave.shape[0])
    result = {"metrics": {k: float(torch.cat(v).mean()) for k, v in per.items()},
              "counts": {"expected": len(items), "used": len(waves)}, "not_used": problems,
              "domain": ae.domain}
    if vocoder_only:
        result["vocoder_only"] = {k: float(torch.cat(v).mean()) for k, v in vocoder_only.items()}
    return result


def vocoders(named: dict[str, Any], items: Sequence[Any], audio: Any, names: Sequence[str], *, batch_size: int = 8,
             max_missing: float = 0.05, progress: bool = True, device: Any = "cpu") -> dict:
    """Each vocoder of ``named`` (name -> mel [B, 1, T, F] -> wave) on the log-mels of the
    same clips: the mel metrics compare the log-mel of what it made with the input's, the wave
    metrics its wave with the clip. {name: {metric: mean}} and the counts."""
    from ..data.mel import log_mel
    from ..progress import Progress

    _check_names(names)
    mono = audio if audio.channels == 1 else dataclasses.replace(audio, channels=1)
    waves, problems = _load(items, mono, max_missing, progress)
    per: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in named}
    with torch.no_grad(), Progress(len(waves), "reconstruction: vocode", "clips", disable=not progress) as bar:
        for i in range(0, len(waves), batch_size):
            wave = torch.stack(waves[i:i + batch_size]).to(device)
            mel = log_mel(wave.float(), mono)
            for name, vocoder in named.items():
                made = vocoder(mel)[..., : wave.shape[-1]].float()
                for k, v in _score(names, mel, log_mel(made, mono), wave, made, mono).items():
                    per[name].setdefault(k, []).append(v.cpu())
            bar.update(wave.shape[0])
    return {"vocoders": {name: {k: float(torch.cat(v).mean()) for k, v in m.items()} for name, m in per.items()},
            "counts": {"expected": len(items), "used": len(waves)}, "not_used": problems}
