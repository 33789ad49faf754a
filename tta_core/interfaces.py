"""The contracts between tta's layers, with the shapes each one takes and gives.

Components are plain objects (usually ``torch.nn.Module``) that satisfy these protocols;
nothing needs to inherit from them. Shapes use: B batch, L tokens, D feature width,
C latent channels, T mel frames, F mel bins, N audio samples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Conditioning:
    """What a conditioner gives a denoiser.

    tokens: [B, L, D] float, a sequence for cross-attention (T5, CLIP), or None.
    mask:   [B, L] bool, True where ``tokens`` holds a real token (not padding), or None.
    pooled: [B, D'] float, one vector per item for FiLM / class embedding (CLAP), or None.
    """

    tokens: "torch.Tensor | None" = None
    mask: "torch.Tensor | None" = None
    pooled: "torch.Tensor | None" = None

    def __post_init__(self) -> None:
        if self.tokens is None and self.pooled is None:
            raise ValueError("Conditioning needs tokens, pooled, or both")
        if self.mask is not None and self.tokens is None:
            raise ValueError("Conditioning.mask describes tokens, but tokens is None")
        if self.tokens is not None and self.tokens.dim() != 3:
            raise ValueError(f"Conditioning.tokens must be [B, L, D], got {tuple(self.tokens.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
            raise ValueError(
                f"Conditioning.mask must be [B, L] = {tuple(self.tokens.shape[:2])}, got {tuple(self.mask.shape)}"
            )
        if self.pooled is not None and self.pooled.dim() != 2:
            raise ValueError(f"Conditioning.pooled must be [B, D], got {tuple(self.pooled.shape)}")
        if self.tokens is not None and self.pooled is not None and self.tokens.shape[0] != self.pooled.shape[0]:
            raise ValueError("Conditioning.tokens and .pooled disagree on the batch size")

    @property
    def batch_size(self) -> int:
        return (self.tokens if self.tokens is not None else self.pooled).shape[0]

    def map(self, fn: Callable[["torch.Tensor"], "torch.Tensor"]) -> "Conditioning":
        """Apply ``fn`` to every tensor present (device moves, indexing, repeats)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None})

    def to(self, *args: Any, **kwargs: Any) -> "Conditioning":
        """Move to a device; float tensors also take a dtype, the bool mask keeps its own."""
        def move(t: "torch.Tensor") -> "torch.Tensor":
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = kwargs.get("device", next((a for a in args if not _is_dtype(a)), None))
            return t.to(device) if device is not None else t
        return self.map(move)

    def repeat(self, n: int) -> "Conditioning":
        """Each item repeated ``n`` times in a row: [a, b] -> [a, a, b, b] for n=2."""
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(items: "list[Conditioning]") -> "Conditioning":
        """Concatenate along the batch; token sequences of different lengths are padded
        with zeros and masked out."""
        import torch

        first = items[0]
        out: dict[str, Any] = {}
        if first.tokens is not None:
            length = max(c.tokens.shape[1] for c in items)
            toks, masks = [], []
            for c in items:
                pad = length - c.tokens.shape[1]
                mask = c.mask if c.mask is not None else torch.ones(c.tokens.shape[:2], dtype=torch.bool, device=c.tokens.device)
                toks.append(torch.nn.functional.pad(c.tokens, (0, 0, 0, pad)))
                masks.append(torch.nn.functional.pad(mask, (0, pad), value=False))
            out["tokens"] = torch.cat(toks)
            out["mask"] = torch.cat(masks) if any(c.mask is not None for c in items) or len({c.tokens.shape[1] for c in items}) > 1 else None
        if first.pooled is not None:
            out["pooled"] = torch.cat([c.pooled for c in items])
        return Conditioning(**out)


def _is_dtype(value: Any) -> bool:
    import torch

    return isinstance(value, torch.dtype)


@runtime_checkable
class Conditioner(Protocol):
    """Text (and optionally audio) to :class:`Conditioning`.

    ``encode_text(texts: list[str]) -> Conditioning`` with batch B = len(texts).
    ``null(batch: int) -> Conditioning``: the unconditional input that classifier-free
    guidance and caption dropout use (the empty prompt, or a learned null embedding).
    Optional: ``encode_audio(wave [B, N], sample_rate: int) -> Conditioning`` for
    conditioners with an audio side (CLAP), so training can use audio without captions.
    """

    def encode_text(self, texts: list[str]) -> Conditioning: ...

    def null(self, batch: int) -> Conditioning: ...


@runtime_checkable
class Autoencoder(Protocol):
    """Audio representation to latent and back.

    ``domain``: ``"mel"`` (encode takes log-mel [B, 1, T, F]) or ``"waveform"`` ([B, 1, N]).
    ``encode(x) -> latent`` [B, C, ...]; ``decode(latent, **sampling) -> x`` in the same
    domain (a diffusion autoencoder decodes by sampling and takes ``steps``/``sampler``).
    ``latent_shape(n) -> tuple`` the latent shape, without batch, for n frames or samples.
    Its decode covers at least n (padding up), or it raises ValueError for an n it cannot
    take; sampling then rounds n up to the next length it takes and trims the audio.
    Optional: ``encode_moments(x) -> (mean, std)`` for a Gaussian posterior, scaled as
    ``encode``'s output, so that a posterior sample is ``mean + std * noise`` (latent caches
    store both and training keeps sampling).
    """

    domain: Literal["mel", "waveform"]

    def encode(self, x: "torch.Tensor") -> "torch.Tensor": ...

    def decode(self, latent: "torch.Tensor", **sampling: Any) -> "torch.Tensor": ...

    def latent_shape(self, n: int) -> tuple[int, ...]: ...


@runtime_checkable
class Denoiser(Protocol):
    """The raw network: ``forward(x_t [B, ...], t [B] float, cond: Conditioning) -> [B, ...]``
    with the output shaped like ``x_t``. ``t`` is the process's time input
    (:meth:`Process.net_time`: the integer timestep 0..T-1 as a float for ``vp_discrete``,
    s in [0, 1] for ``v_diffusion``). What the output means (noise, v, clean signal) is the
    process's business, not the network's.

    Optional: ``null(batch) -> Conditioning``, a learned unconditional input that is part of
    the network (audio-diffusion-pytorch's ``use_embedding_cfg``). When a denoiser has one,
    caption dropout in training and classifier-free guidance in sampling use it instead of
    the conditioner's ``null`` (a negative prompt still goes through the conditioner)."""

    def __call__(self, x_t: "torch.Tensor", t: "torch.Tensor", cond: Conditioning) -> "torch.Tensor": ...


@runtime_checkable
class Vocoder(Protocol):
    """Log-mel [B, 1, T, F] to waveform [B, N], N = T * hop_length, at ``sample_rate``."""

    sample_rate: int
    hop_length: int

    def __call__(self, mel: "torch.Tensor") -> "torch.Tensor": ...


@runtime_checkable
class Embedder(Protocol):
    """Audio (and, for some, text) to embeddings for evaluation metrics: Fréchet distances,
    KL between class posteriors, inception score, CLAP score (:mod:`tta_core.eval.metrics`).

    ``name``: the registry name; ``sample_rate``: the rate in Hz that ``embed`` takes;
    ``dim``: the embedding width D.

    ``settings() -> dict``: every setting that changes the numbers, JSON-serialisable and the
        same on every call: the sample rate (key ``sample_rate``); the channel policy (mono:
        the caller mixes channels down by their mean); the window and padding policy (whole
        clip, a fixed window with repeat-padding, ...); the resampler the caller must use to reach
        ``sample_rate`` (``torchaudio.functional.resample`` with its defaults: Hann-windowed
        sinc, lowpass_filter_width 6, rolloff 0.99); the variant; and the weights (the file's
        absolute path and sha256, or a "random ..." description for untrained weights).
        Evaluation puts it into every cache key and every report.
    ``embed(wave [B, N] float32 at sample_rate) -> [B, frames, D]`` float32: frames = 1 for
        clip-level models; frame-level ones give one row per frame (the items of one batch
        share N, so they share the number of frames; a zero-padded tail counts as silence:
        embed clips of different lengths in separate calls). In eval mode and without
        gradients; the same input gives the same output. Too short a wave is a ValueError
        that says the minimum.

    Optional, for classifiers (KL, inception score): ``num_classes: int`` C and
    ``logits(wave [B, N]) -> [B, C]``, pre-activation outputs ("logits" as ``audioldm_eval``
    takes them from PANNs: softmax or sigmoid is the metric's choice). See :func:`is_classifier`.

    Optional for classifiers, to save a pass: ``embed_with_logits(wave) -> (embed(wave),
    logits(wave))``.

    Optional, for text-audio models (CLAP score): ``embed_text(texts: list[str]) -> [B, D]``
    in the same space as ``embed``'s (clip-level) output, B = len(texts). See :func:`has_text`.
    """

    name: str
    sample_rate: int
    dim: int

    def settings(self) -> dict[str, Any]: ...

    def embed(self, wave: "torch.Tensor") -> "torch.Tensor": ...


def is_classifier(embedder: Any) -> bool:
    """Whether an embedder gives class logits (``num_classes`` and ``logits``): KL and IS need them."""
    return callable(getattr(embedder, "logits", None)) and bool(getattr(embedder, "num_classes", 0))


def has_text(embedder: Any) -> bool:
    """Whether an embedder embeds text in its audio space (``embed_text``): the CLAP score needs it."""
    return callable(getattr(embedder, "embed_text", None))


#: ``denoise(x [B, ...], alpha [B], sigma [B]) -> x0 estimate [B, ...]``: what samplers call.
#: A process makes one from a network (:meth:`Process.denoiser`); classifier-free guidance
#: wraps it (:func:`tta_core.diffusion.guided_denoiser`), so every sampler gets guidance.
DenoiseFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@runtime_checkable
class Process(Protocol):
    """The noise schedule and parameterisation a denoiser is trained with (discrete VP
    eps/v, continuous v-cosine, ...): it owns the maths, so training and sampling agree.

    Levels are (alpha, sigma) with ``x_t = alpha * x_0 + sigma * eps`` for every process.

    ``schedule(steps) -> [S+1, 2]`` float32 (alpha, sigma), most to least noisy; the last
        row is where sampling ends (usually (1, 0)).
    ``net_time(alpha [B], sigma [B]) -> t [B]`` float: the network's time input for a level
        (a discrete timestep index, a continuous time). Exact for the rows of the process's
        own schedules; this is how a sampler that knows only (alpha, sigma) drives any
        network, as k-diffusion's ``sigma_to_t``.
    ``to_x0(output, x, alpha, sigma) -> x0``: a raw network output (noise, v, x0) to the
        clean-signal estimate.
    ``denoiser(net, cond) -> DenoiseFn``: ``to_x0(net(x, net_time(alpha, sigma), cond), ...)``.
    ``training_pair(x0, *, generator=None)``: one fresh level and noise per item, with
        ``.x_t``, ``.t`` (what the net sees), ``.target`` (what it should output),
        ``.alpha``, ``.sigma``, ``.noise`` (``tta_core.diffusion.TrainingPair``).
    ``loss(net, x0, cond, *, generator=None) -> scalar``: the training loss over a fresh
        training pair (mean squared error for the built-in processes).
    """

    def schedule(self, steps: int) -> "torch.Tensor": ...

    def net_time(self, alpha: "torch.Tensor", sigma: "torch.Tensor") -> "torch.Tensor": ...

    def to_x0(self, output: "torch.Tensor", x: "torch.Tensor", alpha: "torch.Tensor",
              sigma: "torch.Tensor") -> "torch.Tensor": ...

    def denoiser(self, net: Denoiser, cond: Conditioning) -> DenoiseFn: ...

    def training_pair(self, x0: "torch.Tensor", *, generator: "torch.Generator | None" = None) -> Any: ...

    def loss(self, net: Denoiser, x0: "torch.Tensor", cond: Conditioning, *,
             generator: "torch.Generator | None" = None) -> "torch.Tensor": ...


@runtime_checkable
class Sampler(Protocol):
    """``sample(denoise, x_T, schedule, *, generator=None, callback=None) -> x``.

    ``schedule`` is a process's [S+1, 2] tensor of (alpha, sigma) from most to least noisy,
    with ``x_t = alpha * x_0 + sigma * eps``; ``x_T`` is at row 0 and the result at the last
    row (the clean end (1, 0), or the small noise level a process ends at to match a
    reference). A sampler knows nothing of the process beyond these numbers, calls
    ``denoise`` (x0 estimate) once per step (a single-step higher-order method such as
    Heun's, a fixed number of times), and keeps any multistep memory in local
    variables: calling it twice gives the same result. ``generator`` feeds the noise it
    draws (``torch.randn(x.shape, generator=generator)`` on the generator's device);
    ``callback(step, total, x)`` is called after each step, step counting from 0.
    Options (DDIM's eta) are fields of the registered factory, not call arguments.
    """

    def __call__(self, denoise: DenoiseFn, x_T: "torch.Tensor", schedule: "torch.Tensor", *,
                 generator: "torch.Generator | None" = None,
                 callback: Callable[[int, int, "torch.Tensor"], None] | None = None) -> "torch.Tensor": ...


def unconditional(denoiser: Any, conditioner: Any) -> Callable[[int], Conditioning]:
    """``null(batch)`` for caption dropout and classifier-free guidance: the denoiser's
    learned one when it has one (see :class:`Denoiser`), else the conditioner's."""
    return denoiser.null if hasattr(denoiser, "null") else conditioner.null
