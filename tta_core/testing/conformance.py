"""Conformance checks: does a component honour its contract in :mod:`tta_core.interfaces`?

For plugin authors, built-in or third-party. Each ``check_*`` builds nothing itself: give it
a small instance of your component (tiny random weights are enough) and it runs the contract
through its paces: output shapes and dtypes, batch independence, determinism under a seed,
moves to another dtype and to every available device. A violation raises
:class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a test failure) with
a message that names the component and says what was expected. Use it from a test::

    from tta_core.testing.conformance import check_denoiser

    def test_my_unet_conforms():
        check_denoiser(MyUNet(channels=8), x=torch.randn(2, 4, 8, 8), cond=my_conditioning)

One check per kind:

- :func:`check_conditioner`, :func:`check_denoiser`, :func:`check_autoencoder`,
  :func:`check_vocoder`, :func:`check_embedder`: the component on inputs you give.
- :func:`check_sampler`: a sampler on a Gaussian toy problem whose exact denoiser is known
  (:func:`gaussian_denoiser`), for any ``[S+1, 2]`` schedule.
- :func:`check_process`: a process's schedules (most to least noisy), training pairs
  (``x_t = alpha x0 + sigma eps``, seeded), the inversion of its network target, the times
  it gives the network in training and in sampling, and its loss.
- :func:`check_objective`: a training stage's objective on a tiny recipe, prepared as the
  trainer prepares it (:func:`stage_context`): parameter groups, gradients that reach what
  the stage trains and nothing frozen, losses replayable from the generator, validation
  that writes only where it is told.
- :func:`check_importer`: an importer on small source files in its format: weights that
  fit the recipe it returns, sources untouched, the same result twice, other formats
  refused with a TtaError.
- :func:`check_dataset_reader`: a dataset reader on a small dataset: items that exist,
  bad rows counted by reason, a missing or unreadable metadata file a clear error, the
  dataset untouched.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..interfaces import Conditioning
from ._common import ConformanceError, _check_finite, _close, _eval, _fail, _moved, devices
from .datasets import check_dataset_reader
from .importers import check_importer
from .objectives import check_objective, stage_context
from .processes import check_process

__all__ = [
    "ConformanceError", "devices", "check_conditioning", "check_conditioner", "check_denoiser", "check_autoencoder",
    "check_vocoder", "gaussian_denoiser", "check_sampler", "check_embedder", "check_process", "check_objective",
    "stage_context", "check_importer", "check_dataset_reader",
]


def check_conditioning(component: Any, cond: Any, batch: int, what: str) -> None:
    if not isinstance(cond, Conditioning):
        _fail(component, f"{what} must return a Conditioning, got {type(cond).__name__}")
    if cond.batch_size != batch:
        _fail(component, f"{what} returned batch {cond.batch_size}, expected {batch}")
    for name in ("tokens", "pooled"):
        t = getattr(cond, name)
        if t is not None:
            if not t.is_floating_point():
                _fail(component, f"{what}.{name} must be a float tensor, got {t.dtype}")
            _check_finite(component, f"{what}.{name}", t)
    if cond.mask is not None and cond.mask.dtype is not torch.bool:
        _fail(component, f"{what}.mask must be bool, got {cond.mask.dtype}")


def check_conditioner(conditioner: Any, texts: Sequence[str] = ("a dog barks", "rain on a tin roof, far away"),
                      audio: torch.Tensor | None = None, sample_rate: int = 16000) -> None:
    """Text (and audio, if given and supported) to Conditioning, null(), determinism."""
    _eval(conditioner)
    texts = list(texts)
    with torch.no_grad():
        out = conditioner.encode_text(texts)
        check_conditioning(conditioner, out, len(texts), "encode_text")
        again = conditioner.encode_text(texts)
        for name in ("tokens", "pooled"):
            a, b = getattr(out, name), getattr(again, name)
            if a is not None and not torch.equal(a, b):
                _fail(conditioner, f"encode_text is not deterministic in eval mode ({name} differs)")
        first = out.pooled if out.pooled is not None else out.tokens[:, 0]
        if torch.equal(first[0], first[1]) and texts[0] != texts[1]:
            _fail(conditioner, "encode_text gives the same conditioning for different texts")
        single = conditioner.encode_text(texts[:1])
        ref = out.pooled[:1] if out.pooled is not None else out.tokens[:1, : single.tokens.shape[1]]
        got = single.pooled if out.pooled is not None else single.tokens
        if not _close(ref, got, atol=1e-4):
            _fail(conditioner, "encoding a text alone differs from encoding it in a batch")
        null = conditioner.null(3)
        check_conditioning(conditioner, null, 3, "null(3)")
        for name in ("tokens", "pooled"):
            a, b = getattr(out, name), getattr(null, name)
            if (a is None) != (b is None):
                _fail(conditioner, f"null() must carry {name} exactly when encode_text does")
            if a is not None and a.shape[-1] != b.shape[-1]:
                _fail(conditioner, f"null().{name} width {b.shape[-1]} differs from encode_text's {a.shape[-1]}")
        if audio is not None and hasattr(conditioner, "encode_audio"):
            check_conditioning(conditioner, conditioner.encode_audio(audio, sample_rate), audio.shape[0], "encode_audio")


def check_denoiser(denoiser: Any, x: torch.Tensor, cond: Conditioning, atol: float = 1e-4) -> None:
    """forward(x_t, t, cond) keeps x_t's shape, is deterministic, batch-independent, movable."""
    _eval(denoiser)
    batch = x.shape[0]
    if batch < 2:
        raise ValueError("check_denoiser needs a batch of at least 2 to check batch independence")
    t = torch.linspace(0.1, 0.9, batch)
    with torch.no_grad():
        out = denoiser(x, t, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            _fail(denoiser, f"output shape {getattr(out, 'shape', None)} differs from x_t's {tuple(x.shape)}")
        if out.dtype != x.dtype:
            _fail(denoiser, f"output dtype {out.dtype} differs from x_t's {x.dtype}")
        _check_finite(denoiser, "output", out)
        if not torch.equal(out, denoiser(x, t, cond)):
            _fail(denoiser, "forward is not deterministic in eval mode")
        alone = denoiser(x[:1], t[:1], cond.map(lambda v: v[:1]))
        if not _close(alone, out[:1], atol):
            _fail(denoiser, "an item's output depends on the other items in the batch")
        other_t = denoiser(x, t.flip(0), cond)
        if torch.equal(other_t, out):
            _fail(denoiser, "output does not depend on t")
        for dtype in (torch.float64,):
            moved = _moved(denoiser, dtype)
            res = moved(x.to(dtype), t.to(dtype), cond.to(dtype))
            if res.dtype != dtype:
                _fail(denoiser, f"after .to({dtype}) the output is {res.dtype}")
            if not _close(res, out, atol=max(atol, 1e-3)):
                _fail(denoiser, f"after .to({dtype}) the output changes beyond rounding")
        for device in devices():
            moved = _moved(denoiser, device)
            res = moved(x.to(device), t.to(device), cond.to(device))
            if res.device.type != torch.device(device).type:
                _fail(denoiser, f"after .to('{device}') the output is on {res.device}")


def check_autoencoder(autoencoder: Any, x: torch.Tensor, atol: float = 1e-4, **decode_kwargs: Any) -> None:
    """encode/decode shapes agree with latent_shape; batch-independent; movable; the
    optional ``encode_moments`` agrees with ``encode``."""
    _eval(autoencoder)
    if getattr(autoencoder, "domain", None) not in ("mel", "waveform"):
        _fail(autoencoder, "domain must be 'mel' or 'waveform'")
    n = x.shape[-2] if autoencoder.domain == "mel" else x.shape[-1]
    with torch.no_grad():
        z = autoencoder.encode(x)
        expected = (x.shape[0], *autoencoder.latent_shape(n))
        if tuple(z.shape) != expected:
            _fail(autoencoder, f"encode gives {tuple(z.shape)}, latent_shape({n}) promises {expected[1:]}")
        _check_finite(autoencoder, "latent", z)
        if not torch.equal(z, autoencoder.encode(x)):
            _fail(autoencoder, "encode is not deterministic in eval mode")
        if not _close(autoencoder.encode(x[:1]), z[:1], atol):
            _fail(autoencoder, "an item's latent depends on the other items in the batch")
        if hasattr(autoencoder, "encode_moments"):
            mean, std = autoencoder.encode_moments(x)
            if tuple(mean.shape) != tuple(z.shape) or tuple(std.shape) != tuple(z.shape):
                _fail(autoencoder, f"encode_moments gives {tuple(mean.shape)} and {tuple(std.shape)}, "
                                   f"encode gives {tuple(z.shape)}")
            if not _close(mean, z, atol):
                _fail(autoencoder, "encode_moments' mean is not what encode gives")
            if not bool((std >= 0).all()):
                _fail(autoencoder, "encode_moments' std has negative values")
        y = autoencoder.decode(z, **decode_kwargs)
        if tuple(y.shape) != tuple(x.shape):
            _fail(autoencoder, f"decode(encode(x)) has shape {tuple(y.shape)}, x has {tuple(x.shape)}")
        _check_finite(autoencoder, "decoded", y)
        for device in devices():
            moved = _moved(autoencoder, device)
            if moved.encode(x.to(device)).device.type != torch.device(device).type:
                _fail(autoencoder, f"after .to('{device}') the latent is elsewhere")


def check_vocoder(vocoder: Any, mel: torch.Tensor) -> None:
    """mel [B, 1, T, F] -> wave [B, T * hop_length]."""
    _eval(vocoder)
    if not isinstance(vocoder.sample_rate, int) or not isinstance(vocoder.hop_length, int):
        _fail(vocoder, "sample_rate and hop_length must be ints")
    with torch.no_grad():
        wave = vocoder(mel)
    expected = (mel.shape[0], mel.shape[2] * vocoder.hop_length)
    if tuple(wave.shape) != expected:
        _fail(vocoder, f"gives {tuple(wave.shape)} for mel {tuple(mel.shape)}, expected {expected}")
    _check_finite(vocoder, "waveform", wave)


def gaussian_denoiser(mean: float = 0.5, std: float = 0.5) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact x0 estimator for data ~ N(mean, std^2): a denoiser with a known answer."""
    def denoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        a, s = alpha.reshape(shape), sigma.reshape(shape)
        var = a**2 * std**2 + s**2
        return mean + a * std**2 * (x - a * mean) / var
    return denoise


def check_sampler(sampler: Callable[..., torch.Tensor], schedule: torch.Tensor, shape: Sequence[int] = (4, 2, 8),
                  mean: float = 0.5, std: float = 0.5, moment_tol: float = 0.15) -> None:
    """The stateless sampler contract on a Gaussian toy problem with an exact denoiser:
    shape kept, deterministic for a generator, no state between calls, progress reported,
    and samples whose mean and spread approach the data's."""
    denoise = gaussian_denoiser(mean, std)
    x_T = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * float(schedule[0, 1]) + float(schedule[0, 0]) * mean
    calls: list[int] = []
    out = sampler(denoise, x_T, schedule, generator=torch.Generator().manual_seed(1),
                  callback=lambda i, n, x: calls.append(i))
    if tuple(out.shape) != tuple(shape):
        _fail(sampler, f"returns shape {tuple(out.shape)} for x_T {tuple(shape)}")
    _check_finite(sampler, "result", out)
    again = sampler(denoise, x_T, schedule, generator=torch.Generator().manual_seed(1))
    if not torch.equal(out, again):
        _fail(sampler, "two calls with the same input and generator seed differ (hidden state?)")
    if not calls:
        _fail(sampler, "callback was never called")
    big = torch.randn(512, 16, generator=torch.Generator().manual_seed(2)) * float(schedule[0, 1]) + float(schedule[0, 0]) * mean
    samples = sampler(denoise, big, schedule, generator=torch.Generator().manual_seed(3))
    if abs(samples.mean().item() - mean) > moment_tol or abs(samples.std().item() - std) > moment_tol:
        _fail(sampler, f"samples of N({mean}, {std}^2) came out with mean {samples.mean():.3f}, std {samples.std():.3f}")


def check_embedder(embedder: Any, wave: torch.Tensor, texts: Sequence[str] = ("a dog barks", "rain on a tin roof"),
                   atol: float = 1e-4, batch_independence: bool = True) -> None:
    """The embedder contract on ``wave`` [B, N] at the embedder's rate: attributes, settings()
    that JSON can hold and that do not change, embed -> [B, frames, dim], deterministic and
    (with ``batch_independence``) the same for an item alone; frozen; the optional
    ``logits`` -> [B, num_classes] and ``embed_text`` -> [len(texts), dim] when present.
    ``texts`` needs two different strings."""
    import json

    from ..interfaces import Embedder, has_text, is_classifier

    if not isinstance(embedder, Embedder):
        missing = [a for a in ("name", "sample_rate", "dim", "settings", "embed") if not hasattr(embedder, a)]
        _fail(embedder, f"is not an Embedder: missing {', '.join(missing)}")
    for attr, kind in (("name", str), ("sample_rate", int), ("dim", int)):
        value = getattr(embedder, attr)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value <= 0):
            _fail(embedder, f"{attr} must be a{' positive' if kind is int else ''} {kind.__name__}, got {value!r}")
    settings = embedder.settings()
    try:
        text = json.dumps(settings, sort_keys=True)
    except (TypeError, ValueError) as exc:
        _fail(embedder, f"settings() must be JSON-serialisable: {exc}")
    if json.dumps(embedder.settings(), sort_keys=True) != text:
        _fail(embedder, "settings() changes from one call to the next")
    if settings.get("sample_rate") != embedder.sample_rate:
        _fail(embedder, f"settings()['sample_rate'] is {settings.get('sample_rate')!r}, the embedder's "
                        f"sample_rate {embedder.sample_rate}")
    if getattr(embedder, "training", False):
        _fail(embedder, "must be in eval mode")
    if isinstance(embedder, torch.nn.Module) and any(p.requires_grad for p in embedder.parameters()):
        _fail(embedder, "parameters must not require gradients")
    if wave.dim() != 2:
        raise ValueError(f"check_embedder takes a wave [B, N], got {tuple(wave.shape)}")
    batch = wave.shape[0]
    with torch.no_grad():
        out = embedder.embed(wave)
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != batch or out.shape[2] != embedder.dim:
            _fail(embedder, f"embed gives {tuple(getattr(out, 'shape', ()))} for a wave {tuple(wave.shape)}, "
                            f"expected [{batch}, frames, {embedder.dim}]")
        if not out.is_floating_point() or out.requires_grad:
            _fail(embedder, "embed must give a float tensor without gradients")
        _check_finite(embedder, "embed", out)
        if not torch.equal(out, embedder.embed(wave)):
            _fail(embedder, "embed is not deterministic (the same wave gave other numbers)")
        if batch_independence and batch > 1 and not _close(embedder.embed(wave[:1]), out[:1], atol):
            _fail(embedder, "an item's embedding depends on the other items in the batch")
        if is_classifier(embedder):
            logits = embedder.logits(wave)
            if tuple(logits.shape) != (batch, embedder.num_classes):
                _fail(embedder, f"logits gives {tuple(logits.shape)}, expected ({batch}, {embedder.num_classes})")
            _check_finite(embedder, "logits", logits)
            if not torch.equal(logits, embedder.logits(wave)):
                _fail(embedder, "logits is not deterministic")
        if has_text(embedder):
            texts = list(texts)
            emb = embedder.embed_text(texts)
            if tuple(emb.shape) != (len(texts), embedder.dim):
                _fail(embedder, f"embed_text gives {tuple(emb.shape)} for {len(texts)} texts, expected "
                                f"({len(texts)}, {embedder.dim})")
            _check_finite(embedder, "embed_text", emb)
            if not torch.equal(emb, embedder.embed_text(texts)):
                _fail(embedder, "embed_text is not deterministic")
            if len(set(texts)) > 1 and torch.equal(emb[0], emb[1]):
                _fail(embedder, "embed_text gives the same embedding for different texts")
    for device in devices()[1:]:  # other devices than the CPU, when present
        moved = _moved(embedder, device)
        with torch.no_grad():
            res = moved.embed(wave.to(device))
        if res.device.type != torch.device(device).type:
            _fail(embedder, f"after .to('{device}') embed gives its output on {res.device}")
