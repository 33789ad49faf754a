"""Metric maths for evaluating text-to-audio models and their autoencoders.

Every function here works on tensors that some model has already produced (embeddings, class
posteriors, spectrograms, waveforms); none loads weights. Everything is computed in float64,
whatever dtype and device the inputs come in. Bad input (wrong shapes, empty sets, NaN or inf,
zero-energy signals where a metric is undefined) raises :class:`ValueError` saying what was
wrong; no metric ever returns a sentinel such as -1 (``audioldm_eval`` does, when file names
do not match).

Conventions were checked against the public sources of ``haoheliu/audioldm_eval`` (files
``audioldm_eval/eval.py``, ``audioldm_eval/metrics/{fid,fad,isc,kl,clap_score}.py``,
``build/lib/audioldm_eval/metrics/kl.py``, ``audioldm_eval/feature_extractors/panns/models.py``),
``haoheliu/ssr_eval`` (``ssr_eval/metrics.py``, the LSD that ``audioldm_eval`` calls),
``microsoft/fadtk`` (``fadtk/fad.py``) and ``toshas/torch-fidelity``
(``torch_fidelity/metric_isc.py``). Differences are listed per metric.

Fréchet distance (FD, FAD) -- lower is better, 0 for identical statistics
    ``||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^{1/2} C2 C1^{1/2})^{1/2})`` between the
    Gaussians fitted to two sets of embeddings (Dowson & Landau 1982; Heusel et al. 2017,
    "GANs trained by a two time-scale update rule..." (FID); Kilgour et al. 2019, "Fréchet
    Audio Distance"). ``audioldm_eval`` reports it as ``frechet_distance`` on PANNs Cnn14
    2048-d clip embeddings and as ``frechet_audio_distance`` on VGGish frame embeddings
    (every 0.96 s frame of every file is one row); ``fadtk`` also uses frame embeddings.
    Covariances are unbiased (divide by n - 1) as ``np.cov(rowvar=False)`` in both. They take
    ``scipy.linalg.sqrtm`` of the non-symmetric product ``C1 @ C2`` (retrying with 1e-6 added
    to the diagonals when it is not finite, dropping small imaginary parts); here both square
    roots of the covariances come from the symmetric eigendecomposition (``torch.linalg.eigh``,
    round-off negative eigenvalues clamped to 0), and ``tr((C1^{1/2} C2 C1^{1/2})^{1/2})`` is
    taken as the sum of singular values of ``C1^{1/2} C2^{1/2}`` (the eigenvalues of
    ``C1^{1/2} C2 C1^{1/2}`` are their squares), which avoids a third square root and its
    round-off amplification. For PSD covariances the value is the same; no diagonal offset is
    ever added. The statistics (:class:`GaussianStats`) are count, sum and sum of outer
    products, so per-process statistics can be summed (all-reduced) and cached; the price is
    cancellation when ``|mean|^2 / variance`` is huge (relative error ~1e-16 times that ratio
    in float64, negligible for network embeddings).

KL divergence between classifier posteriors -- lower is better
    Generated and reference clips are paired by name (``audioldm_eval`` pairs on the file's
    base name, and skips reference names with no generated file). ``audioldm_eval``
    (``metrics/kl.py``, called as ``calculate_kl(featuresdict_generated, featuresdict_target,
    "logits", same_name)``) computes ``F.kl_div((gen + 1e-6).log(), ref, reduction="sum") /
    n_pairs``, i.e. the mean over pairs of ``KL(ref || gen) = sum_c ref_c log(ref_c / gen_c)``
    (its printout: "input2 is pseudo target and input1 is prediction. KL(input2_i||input1_i)").
    "logits" are the raw pre-activation outputs of PANNs Cnn14 (527 AudioSet classes). Two
    variants are reported: ``kullback_leibler_divergence_softmax`` (softmax over the 527
    logits; "AudioGen use this formulation", and what ``audioldm_eval`` prints as "KL") and
    ``kullback_leibler_divergence_sigmoid`` (the same sum over the 527 per-class sigmoid
    outputs, which do not sum to 1: this is not a proper KL, nor a sum of Bernoulli KLs, and
    can be negative for an item). :func:`kl_divergence` takes probabilities and returns that
    direction (``ref_to_gen``) and the reverse ``KL(gen || ref)``;
    :func:`kl_divergence_from_logits` applies softmax or sigmoid first (with ``eps=1e-6`` by
    default, as ``audioldm_eval``; it applies the activations in float32, here float64).
    Logs are ``torch.xlogy``-safe: ``0 log 0 = 0``; a class with ``p > 0`` but ``q = 0`` makes
    ``KL(p || q)`` ``inf`` unless ``eps > 0``. Instead of returning -1 when under 99 % of the
    names match, as ``audioldm_eval`` does, the unpaired names are reported (or raise, with
    ``strict=True``).

Inception score (IS) -- higher is better, in [1, C]
    ``exp(mean_i KL(p(y|x_i) || p(y)))`` with ``p(y)`` the mean posterior of the split
    (Salimans et al. 2016). The N rows are cut into ``splits`` contiguous chunks
    ``[i N // splits, (i + 1) N // splits)``, the score taken per chunk, and the mean and the
    population standard deviation (``np.std``, ddof 0) over chunks returned -- as
    ``torch-fidelity`` and ``audioldm_eval`` (``metrics/isc.py``, splits=10) do. Both first
    shuffle rows with ``np.random.RandomState(2020).permutation(N)``; pass
    ``shuffle_seed=2020`` to reproduce that, or ``None`` (default) to keep the given order.
    ``audioldm_eval`` feeds softmax(PANNs logits) in float64.

CLAP score -- higher is better, in [-1, 1]
    Mean over items of the cosine similarity between each caption's text embedding and its
    audio's embedding (``audioldm_eval/metrics/clap_score.py``: one similarity per file, then
    ``np.mean``). Reported raw, not multiplied by 100 nor clipped at 0.

Reconstruction metrics (autoencoders / vocoders)
    All take a reference and an estimate of the same shape, batched on the first axis, and
    return a float64 tensor ``[B]`` with one value per item (take ``.mean()`` for the set
    mean, the way ``audioldm_eval`` averages per-file values). Spectrograms are ``[B, T, F]``
    or ``[B, C, T, F]`` (time, then frequency, as the project's log-mel ``[B, 1, T, F]``);
    with C channels, the per-channel values are averaged.

    - :func:`lsd` -- lower is better, 0 for identical inputs. Log-spectral distance on *power*
      spectrograms: ``mean_t sqrt(mean_f (log10(P_ref + eps) - log10(P_est + eps))^2)``,
      log base 10 (not dB), ``eps = 1e-12``. This is the definition of audio super-resolution
      papers (Kuleshov et al. 2017; NVSR / ``ssr_eval``, which ``audioldm_eval`` uses); there
      ``P = |STFT|^2`` (n_fft 2048 at 44.1 kHz, hop 10 ms) and eps sits inside the ratio
      (``log10(P_ref / (|S_est| + 1e-12)^2 + 1e-12)``), which differs only for near-silent bins.
    - :func:`mel_l1` -- lower is better. Mean absolute difference of log-mel spectrograms.
    - :func:`psnr` -- higher is better, dB. ``10 log10(R^2 / MSE)`` with ``R`` the reference
      item's ``max - min`` (or a given ``data_range``); ``+inf`` for identical inputs.
      ``audioldm_eval`` calls ``skimage.metrics.peak_signal_noise_ratio(mel_gen, mel_target)``
      without a data range, so skimage takes R from the *generated* mel's dtype range (for
      floats: 1 if it is non-negative, else 2; values outside [-1, 1] raise) and it skips
      infinite items: its numbers are not comparable to these.
    - :func:`ssim` -- higher is better, 1 for identical inputs. Wang et al. 2004: Gaussian
      window 11 x 11 (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances, mean of the
      SSIM map over the positions where the window fits ("valid"); equal to
      ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False, data_range=R)``. ``R`` as for :func:`psnr` (the reference
      item's max - min). ``audioldm_eval`` uses skimage's default 7 x 7 uniform window with
      sample covariance and R = max - min over both mels.
    - :func:`si_sdr` -- higher is better, dB. Scale-invariant SDR (Le Roux et al. 2019,
      "SDR -- half-baked or well done?"): both signals made zero-mean, target = projection of
      the estimate on the reference, ``10 log10(||target||^2 / ||estimate - target||^2)``; no
      epsilon, so ``+inf`` when the estimate is an exact scaled copy. Waveforms ``[B, N]`` or
      ``[B, C, N]``.
    - :func:`pesq_wb` -- higher is better, MOS-LQO in about [1.04, 4.64]. Wide-band PESQ
      (ITU-T P.862.2) from the ``pesq`` package at 16 kHz; other rates are resampled with
      ``torchaudio.functional.resample`` first. Meaningful for speech only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

__all__ = [
    "GaussianStats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "KLResult",
    "kl_divergence",
    "kl_divergence_from_logits",
    "inception_score",
    "clap_score",
    "lsd",
    "mel_l1",
    "psnr",
    "ssim",
    "si_sdr",
    "pesq_wb",
]

_F64 = torch.float64


def _tensor(name: str, x: Any, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Any array-like -> detached float64 tensor (same device), checked for shape and finiteness."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # noqa: BLE001 - report what could not be converted
            raise ValueError(f"{name}: cannot be converted to a tensor ({exc})") from exc
    if x.is_complex():
        raise ValueError(f"{name}: complex values are not accepted")
    if dims is not None and x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(x.shape)}")
    x = x.detach().to(_F64)
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def _same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


# ----------------------------------------------------------------------------- Fréchet distance


@dataclass
class GaussianStats:
    """Running statistics of a set of D-dim embeddings, in float64: count, sum, sum of outer products.

    All three are plain sums, so the statistics of a data set split over processes or batches
    are the sum of the parts (:meth:`merge`, ``+``, or an all-reduce SUM of each tensor in
    :meth:`to_dict`). ``n = 0`` with ``sum`` and ``sum_outer`` ``None`` is "empty, dimension not
    known yet"; :meth:`empty` makes an empty one of known dimension (zeros), which is what a
    process with no items should all-reduce.

    ``sum``: [D]; ``sum_outer``: [D, D] (= X^T X over the rows X added so far).
    """

    n: int = 0
    sum: torch.Tensor | None = None
    sum_outer: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, torch.Tensor):
            self.n = int(self.n.item())
        if int(self.n) != self.n or self.n < 0:
            raise ValueError(f"GaussianStats.n must be a non-negative integer, got {self.n!r}")
        self.n = int(self.n)
        if (self.sum is None) != (self.sum_outer is None):
            raise ValueError("GaussianStats: sum and sum_outer must both be given or both be None")
        if self.sum is None:
            if self.n:
                raise ValueError(f"GaussianStats: n = {self.n} but no sums were given")
            return
        # own copies: add() accumulates in place and must not write into the caller's tensors
        s = torch.as_tensor(self.sum).detach().to(_F64).clone()
        so = torch.as_tensor(self.sum_outer).detach().to(device=s.device, dtype=_F64).clone()
        if s.dim() != 1 or s.shape[0] == 0 or so.shape != (s.shape[0], s.shape[0]):
            raise ValueError(f"GaussianStats: sum must be [D] and sum_outer [D, D] with D >= 1, "
                             f"got {tuple(s.shape)} and {tuple(so.shape)}")
        if not (torch.isfinite(s).all() and torch.isfinite(so).all()):
            raise ValueError("GaussianStats: sums contain NaN or inf")
        self.sum, self.sum_outer = s, so

    @classmethod
    def empty(cls, dim: int, device: torch.device | str | None = None) -> "GaussianStats":
        """No items yet, dimension ``dim`` known: zero sums."""
        if dim < 1:
            raise ValueError(f"GaussianStats.empty: dim must be >= 1, got {dim}")
        return cls(0, torch.zeros(dim, dtype=_F64, device=device), torch.zeros(dim, dim, dtype=_F64, device=device))

    @classmethod
    def from_embeddings(cls, embeddings: torch.Tensor) -> "GaussianStats":
        """Statistics of embeddings [N, D]."""
        return cls().add(embeddings)

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else int(self.sum.shape[0])

    def add(self, embeddings: torch.Tensor) -> "GaussianStats":
        """Accumulate embeddings [N, D] (any float dtype; summed in float64) in place; returns self."""
        if not isinstance(embeddings, torch.Tensor):
            embeddings = torch.as_tensor(embeddings)
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings: expected [N, D], got shape {tuple(embeddings.shape)}")
        if embeddings.shape[0] == 0:  # nothing to add, but it fixes D
            x = embeddings.detach().to(_F64)
        else:
            x = _tensor("embeddings", embeddings)
        if x.shape[1] == 0:
            raise ValueError("embeddings: D must be >= 1")
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], dtype=_F64, device=x.device)
            self.sum_outer = torch.zeros(x.shape[1], x.shape[1], dtype=_F64, device=x.device)
        elif x.shape[1] != self.sum.shape[0]:
            raise ValueError(f"embeddings: dimension {x.shape[1]} does not match the statistics' {self.sum.shape[0]}")
        x = x.to(self.sum.device)
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x
        self.n += int(x.shape[0])
        return self

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Statistics of the union of both item sets (a new object; neither input changes)."""
        if not isinstance(other, GaussianStats):
            raise ValueError(f"can only merge GaussianStats, got {type(other).__name__}")
        if other.sum is None:
            return GaussianStats(self.n, self.sum, self.sum_outer)  # __post_init__ copies
        if self.sum is None:
            return other.merge(self)
        if self.sum.shape != other.sum.shape:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        dev = self.sum.device
        return GaussianStats(self.n + other.n, self.sum + other.sum.to(dev), self.sum_outer + other.sum_outer.to(dev))

    def __add__(self, other: "GaussianStats") -> "GaussianStats":
        return self.merge(other)

    @property
    def mean(self) -> torch.Tensor:
        """[D] float64 mean of the items added."""
        if self.n < 1 or self.sum is None:
            raise ValueError("GaussianStats.mean: no items have been added")
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """[D, D] float64 unbiased covariance (divides by n - 1, as np.cov); needs n >= 2."""
        if self.n < 2 or self.sum is None:
            raise ValueError(f"GaussianStats.cov: the covariance needs at least 2 items, got {self.n}")
        c = (self.sum_outer - torch.outer(self.sum, self.sum) / self.n) / (self.n - 1)
        return (c + c.T) / 2

    def to_dict(self) -> dict[str, torch.Tensor]:
        """{"n": int64 scalar, "sum": [D], "sum_outer": [D, D]} -- all tensors, so each can be
        all-reduced with SUM or saved (torch.save, safetensors) and read back with :meth:`from_dict`."""
        if self.sum is None:
            raise ValueError("GaussianStats.to_dict: dimension unknown; use GaussianStats.empty(dim) for an empty set")
        return {"n": torch.tensor(self.n, dtype=torch.int64, device=self.sum.device),
                "sum": self.sum, "sum_outer": self.sum_outer}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GaussianStats":
        missing = {"n", "sum", "sum_outer"} - set(d)
        if missing:
            raise ValueError(f"GaussianStats.from_dict: missing keys {sorted(missing)}")
        n = d["n"]
        if isinstance(n, torch.Tensor):
            if n.numel() != 1:
                raise ValueError(f"GaussianStats.from_dict: n must be a scalar, got shape {tuple(n.shape)}")
            n = n.item()
        if float(n) != int(n):
            raise ValueError(f"GaussianStats.from_dict: n must be an integer, got {n!r}")
        return cls(int(n), d["sum"], d["sum_outer"])


def _psd_sqrt(name: str, cov: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root by eigh; round-off negative eigenvalues clamped to 0."""
    w, v = torch.linalg.eigh(cov)
    top = float(w.abs().max())
    if float(w.min()) < -1e-6 * max(top, 1e-300):
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {float(w.min()):.3g}, "
                         f"largest magnitude {top:.3g})")
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2): a Python float >= 0.

    mu: [D]; cov: [D, D], symmetric positive semi-definite (any float dtype; computed in float64).
    Units: squared embedding units (scaling all embeddings by c scales the distance by c^2).
    """
    mu1, mu2 = _tensor("mu1", mu1, dims=(1,)), _tensor("mu2", mu2, dims=(1,))
    cov1, cov2 = _tensor("cov1", cov1, dims=(2,)), _tensor("cov2", cov2, dims=(2,))
    d = mu1.shape[0]
    if mu2.shape[0] != d or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {tuple(mu1.shape)}, cov1 {tuple(cov1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, cov2 {tuple(cov2.shape)}; expected [D] and [D, D]")
    mu2, cov2 = mu2.to(mu1.device), cov2.to(mu1.device)
    cov1 = cov1.to(mu1.device)
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        scale = float(c.abs().max())
        if float((c - c.T).abs().max()) > 1e-5 * max(scale, 1e-300):  # float32 round-off passes
            raise ValueError(f"{name} is not symmetric")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    s1, s2 = _psd_sqrt("cov1", cov1), _psd_sqrt("cov2", cov2)
    # tr((C1^1/2 C2 C1^1/2)^1/2) = sum of singular values of C1^1/2 C2^1/2
    tr_covmean = torch.linalg.svdvals(s1 @ s2).sum()
    diff = mu1 - mu2
    fd = float(diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_covmean)
    return max(fd, 0.0)  # round-off can leave a tiny negative for (near-)identical statistics


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """:func:`frechet_distance` between the Gaussians fitted to two :class:`GaussianStats` (each n >= 2)."""
    if a.dim is not None and b.dim is not None and a.dim != b.dim:
        raise ValueError(f"statistics have different dimensions: {a.dim} and {b.dim}")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# ----------------------------------------------------------------------------- KL divergence


@dataclass
class KLResult:
    """KL divergences between paired classifier posteriors, in nats, averaged over pairs.

    ``ref_to_gen`` = mean KL(reference || generated): the direction ``audioldm_eval`` reports
    (``F.kl_div(gen.log(), ref)``). ``gen_to_ref`` = mean KL(generated || reference).
    ``per_item``: name -> KL(reference || generated). ``only_in_gen`` / ``only_in_ref``: names
    that had no partner and were left out (sorted).
    """

    ref_to_gen: float
    gen_to_ref: float
    n_pairs: int
    only_in_gen: list[str] = field(default_factory=list)
    only_in_ref: list[str] = field(default_factory=list)
    per_item: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ref_to_gen": self.ref_to_gen, "gen_to_ref": self.gen_to_ref, "n_pairs": self.n_pairs,
                "only_in_gen": list(self.only_in_gen), "only_in_ref": list(self.only_in_ref),
                "per_item": dict(self.per_item)}


def _kl_rows(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-wise sum_c p log(p / (q + eps)) with 0 log 0 = 0; inf where p > 0 and q + eps = 0."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q + eps)).sum(-1)


def kl_divergence(
    gen_probs: Mapping[str, torch.Tensor],
    ref_probs: Mapping[str, torch.Tensor],
    *,
    eps: float = 0.0,
    normalized: bool = True,
    strict: bool = False,
) -> KLResult:
    """KL divergences between generated and reference class posteriors paired by name.

    gen_probs / ref_probs: name -> probabilities [C] (e.g. the file's base name, as
    ``audioldm_eval`` pairs). Only names on both sides are used; the others are reported in
    the result (``strict=True`` raises instead). ``eps`` is added to the distribution inside
    the log (the generated one for ``ref_to_gen``, the reference one for ``gen_to_ref``);
    ``audioldm_eval`` uses 1e-6. With ``eps=0`` a class with probability 0 on the second side
    but > 0 on the first gives ``inf``. ``normalized``: check every vector sums to 1 (set
    False for per-class sigmoid outputs, as in ``audioldm_eval``'s sigmoid variant).
    """
    if not isinstance(gen_probs, Mapping) or not isinstance(ref_probs, Mapping):
        raise ValueError("gen_probs and ref_probs must be mappings name -> probabilities [C]")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if not gen_probs or not ref_probs:
        raise ValueError(f"empty input: {len(gen_probs)} generated and {len(ref_probs)} reference items")
    names = sorted(set(gen_probs) & set(ref_probs), key=str)
    only_gen = sorted(set(gen_probs) - set(ref_probs), key=str)
    only_ref = sorted(set(ref_probs) - set(gen_probs), key=str)
    if not names:
        raise ValueError(f"no names in common between {len(gen_probs)} generated and {len(ref_probs)} reference "
                         f"items (e.g. generated {only_gen[:3]}, reference {only_ref[:3]})")
    if strict and (only_gen or only_ref):
        raise ValueError(f"unpaired items: {len(only_gen)} only generated (e.g. {only_gen[:3]}), "
                         f"{len(only_ref)} only reference (e.g. {only_ref[:3]})")
    gen, ref = [], []
    for name in names:
        g = _tensor(f"gen_probs[{name!r}]", gen_probs[name], dims=(1,))
        r = _tensor(f"ref_probs[{name!r}]", ref_probs[name], dims=(1,)).to(g.device)
        _same_shape(f"gen_probs[{name!r}]", g, f"ref_probs[{name!r}]", r)
        for side, x in (("gen_probs", g), ("ref_probs", r)):
            if (x < 0).any():
                raise ValueError(f"{side}[{name!r}]: negative probabilities")
            if normalized and abs(float(x.sum()) - 1.0) > 1e-4:
                raise ValueError(f"{side}[{name!r}]: sums to {float(x.sum()):.6f}, not 1 "
                                 "(pass normalized=False for per-class sigmoid outputs)")
            if not normalized and (x > 1).any():
                raise ValueError(f"{side}[{name!r}]: probabilities above 1")
        gen.append(g)
        ref.append(r)
    if len({g.shape[0] for g in gen}) != 1:
        raise ValueError(f"items have different numbers of classes: {sorted({g.shape[0] for g in gen})}")
    dev = gen[0].device
    g, r = torch.stack([x.to(dev) for x in gen]), torch.stack([x.to(dev) for x in ref])
    kl_rg = _kl_rows(r, g, eps)
    kl_gr = _kl_rows(g, r, eps)
    return KLResult(float(kl_rg.mean()), float(kl_gr.mean()), len(names), only_gen, only_ref,
                    dict(zip(names, kl_rg.tolist())))


def kl_divergence_from_logits(
    gen_logits: Mapping[str, torch.Tensor],
    ref_logits: Mapping[str, torch.Tensor],
    *,
    activation: str = "softmax",
    eps: float = 1e-6,
    strict: bool = False,
) -> KLResult:
    """:func:`kl_divergence` on classifier logits (name -> [C]), as ``audioldm_eval`` does.

    ``activation="softmax"`` gives its ``kullback_leibler_divergence_softmax`` (the KL of the
    AudioLDM tables) as ``ref_to_gen``; ``"sigmoid"`` its ``kullback_leibler_divergence_sigmoid``
    (per-class sigmoids summed as if they were one distribution; not a true KL). ``eps=1e-6``
    matches its smoothing.
    """
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")

    def act(side: str, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(d, Mapping):
            raise ValueError(f"{side} must be a mapping name -> logits [C]")
        out = {}
        for k, v in d.items():
            x = _tensor(f"{side}[{k!r}]", v, dims=(1,))
            out[k] = x.softmax(-1) if activation == "softmax" else x.sigmoid()
        return out

    return kl_divergence(act("gen_logits", gen_logits), act("ref_logits", ref_logits), eps=eps,
                         normalized=activation == "softmax", strict=strict)


# ----------------------------------------------------------------------------- Inception score


def inception_score(probs: torch.Tensor, splits: int = 10, *, shuffle_seed: int | None = None) -> tuple[float, float]:
    """Inception score of class posteriors probs [N, C] (rows sum to 1): (mean, std) over splits.

    Splits are contiguous chunks ``[i N // splits, (i + 1) N // splits)`` of the rows, after an
    optional ``np.random.RandomState(shuffle_seed).permutation(N)`` (2020 reproduces
    ``audioldm_eval`` / ``torch-fidelity``). std is the population std (ddof 0). A score is in
    [1, C]; identical predictions give exactly 1.
    """
    p = _tensor("probs", probs, dims=(2,))
    n, c = p.shape
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= n:
        raise ValueError(f"splits must be an integer in [1, N = {n}], got {splits!r}")
    if (p < 0).any():
        raise ValueError("probs: negative probabilities")
    sums = p.sum(1)
    if ((sums - 1).abs() > 1e-4).any():
        bad = int(((sums - 1).abs() > 1e-4).nonzero()[0])
        raise ValueError(f"probs: row {bad} sums to {float(sums[bad]):.6f}, not 1 (pass softmax probabilities)")
    if shuffle_seed is not None:
        import numpy as np

        order = torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n)).to(p.device)
        p = p[order]
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        marginal = chunk.mean(0, keepdim=True)
        kl = (torch.xlogy(chunk, chunk) - torch.xlogy(chunk, marginal)).sum(1)
        scores.append(torch.exp(kl.mean()))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(correction=0))


# ----------------------------------------------------------------------------- CLAP score


def clap_score(text_emb: torch.Tensor, audio_emb: torch.Tensor, batch_size: int = 256) -> float:
    """Mean cosine similarity of paired rows of text_emb [N, D] and audio_emb [N, D].

    Computed ``batch_size`` rows at a time (embeddings may live on a GPU); every row counts
    once, whatever the remainder. Embeddings need not be normalised; a zero-norm row raises.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for name, x in (("text_emb", text_emb), ("audio_emb", audio_emb)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or 0 in x.shape:
            raise ValueError(f"{name}: expected a non-empty [N, D] tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if text_emb.shape != audio_emb.shape:
        raise ValueError(f"text_emb and audio_emb must have the same shape [N, D], got {tuple(text_emb.shape)} "
                         f"and {tuple(audio_emb.shape)}")
    n = text_emb.shape[0]
    total = torch.zeros((), dtype=_F64, device=text_emb.device)
    for start in range(0, n, batch_size):
        t = _tensor("text_emb", text_emb[start:start + batch_size])
        a = _tensor("audio_emb", audio_emb[start:start + batch_size]).to(t.device)
        tn, an = t.norm(dim=1), a.norm(dim=1)
        if (tn == 0).any() or (an == 0).any():
            row = start + int(((tn == 0) | (an == 0)).nonzero()[0])
            raise ValueError(f"row {row} has a zero-norm embedding; cosine similarity is undefined")
        total = total + ((t * a).sum(1) / (tn * an)).sum()
    return float(total / n)


# ----------------------------------------------------------------------------- reconstruction


def _pair(ref: torch.Tensor, est: torch.Tensor, names: tuple[str, str], dims: tuple[int, int]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference/estimate pair of ``dims[0]`` (no channel axis) or ``dims[1]`` dimensions ->
    float64 pair with a channel axis at 1."""
    r = _tensor(names[0], ref, dims=dims)
    e = _tensor(names[1], est, dims=dims).to(r.device)
    _same_shape(names[0], r, names[1], e)
    if r.dim() == dims[0]:
        r, e = r.unsqueeze(1), e.unsqueeze(1)
    return r, e


def _spec_pair(ref: torch.Tensor, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, F] or [B, C, T, F] pair -> float64 [B, C, T, F] pair."""
    return _pair(ref, est, ("ref", "est"), (3, 4))


def _data_range(ref: torch.Tensor, data_range: float | None) -> torch.Tensor:
    """Per-item data range [B] (reference max - min unless given)."""
    b = ref.shape[0]
    if data_range is not None:
        if not math.isfinite(data_range) or data_range <= 0:
            raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
        return torch.full((b,), float(data_range), dtype=_F64, device=ref.device)
    flat = ref.reshape(b, -1)
    rng = flat.amax(1) - flat.amin(1)
    if (rng == 0).any():
        raise ValueError(f"reference item {int((rng == 0).nonzero()[0])} is constant; its data range (max - min) "
                         "is 0, pass data_range explicitly")
    return rng


def lsd(ref_spec_power: torch.Tensor, est_spec_power: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Log-spectral distance per item [B] between power spectrograms [B, T, F] or [B, C, T, F] (>= 0).

    ``mean_t sqrt(mean_f (log10(P_ref + eps) - log10(P_est + eps))^2)``, in log10 units (bels,
    not dB). Power, not magnitude: pass ``|STFT|^2``.
    """
    r, e = _spec_pair(ref_spec_power, est_spec_power)
    if (r < 0).any() or (e < 0).any():
        raise ValueError("lsd takes power spectrograms; found negative values (log-spectrograms?)")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    d = torch.log10(r + eps) - torch.log10(e + eps)
    return d.pow(2).mean(-1).sqrt().mean(-1).mean(-1)


def mel_l1(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per item [B] of log-mel spectrograms [B, ...] (units of the input)."""
    r = _tensor("ref", ref)
    e = _tensor("est", est).to(r.device)
    if r.dim() < 2:
        raise ValueError(f"expected batched input [B, ...], got shape {tuple(r.shape)}")
    _same_shape("ref", r, "est", e)
    return (r - e).abs().reshape(r.shape[0], -1).mean(1)


def psnr(ref: torch.Tensor, est: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """PSNR per item [B] in dB of log-mel spectrograms [B, ...]: ``10 log10(R^2 / MSE)``.

    R: the reference item's max - min, or ``data_range``. ``+inf`` where est equals ref.
    """
    r = _tensor("ref", ref)
    e = _tensor("est", est).to(r.device)
    if r.dim() < 2:
        raise ValueError(f"expected batched input [B, ...], got shape {tuple(r.shape)}")
    _same_shape("ref", r, "est", e)
    rng = _data_range(r, data_range)
    mse = (r - e).pow(2).reshape(r.shape[0], -1).mean(1)
    return 10 * torch.log10(rng.pow(2) / mse)  # mse == 0 -> +inf


_SSIM_SIGMA, _SSIM_RADIUS, _SSIM_K1, _SSIM_K2 = 1.5, 5, 0.01, 0.03  # window 2 * 5 + 1 = 11


def ssim(ref: torch.Tensor, est: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Structural similarity per item [B] of spectrograms [B, T, F] or [B, C, T, F] (T, F >= 11).

    Gaussian window 11 x 11, sigma 1.5; K1 = 0.01, K2 = 0.03; R = the reference item's
    max - min, or ``data_range``; mean of the SSIM map over valid window positions.
    """
    r, e = _spec_pair(ref, est)
    b, c, t, f = r.shape
    size = 2 * _SSIM_RADIUS + 1
    if t < size or f < size:
        raise ValueError(f"ssim needs at least {size} x {size} time x frequency bins, got {t} x {f}")
    rng = _data_range(r, data_range).view(b, 1, 1, 1)
    x = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=_F64, device=r.device)
    g = torch.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    g = g / g.sum()
    kt, kf = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def blur(z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(b * c, 1, t, f)
        z = torch.nn.functional.conv2d(torch.nn.functional.conv2d(z, kt), kf)
        return z.reshape(b, c, t - size + 1, f - size + 1)

    mx, my = blur(r), blur(e)
    vx, vy, cxy = blur(r * r) - mx * mx, blur(e * e) - my * my, blur(r * e) - mx * my
    c1, c2 = (_SSIM_K1 * rng) ** 2, (_SSIM_K2 * rng) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(1)


def _wave_pair(ref: torch.Tensor, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] or [B, C, N] pair -> float64 [B, C, N] pair."""
    return _pair(ref, est, ("ref_wave", "est_wave"), (2, 3))


def si_sdr(ref_wave: torch.Tensor, est_wave: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR per item [B] in dB of waveforms [B, N] or [B, C, N] (channels averaged).

    Zero-mean signals; ``alpha = <est, ref> / ||ref||^2``; ``10 log10(||alpha ref||^2 /
    ||est - alpha ref||^2)``. ``+inf`` for an exact scaled copy; a silent (constant) reference
    or estimate raises.
    """
    r, e = _wave_pair(ref_wave, est_wave)
    r = r - r.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    er, ee = r.pow(2).sum(-1), e.pow(2).sum(-1)
    for name, energy in (("ref_wave", er), ("est_wave", ee)):
        if (energy == 0).any():
            item = int((energy == 0).nonzero()[0, 0])
            raise ValueError(f"{name} item {item} is silent (zero energy after removing the mean); SI-SDR is undefined")
    alpha = (e * r).sum(-1, keepdim=True) / er.unsqueeze(-1)
    target = alpha * r
    noise = e - target
    return (10 * torch.log10(target.pow(2).sum(-1) / noise.pow(2).sum(-1))).mean(1)


def pesq_wb(ref: torch.Tensor, est: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Wide-band PESQ (P.862.2, MOS-LQO) per item [B] of waveforms [B, N] or [B, 1, N].

    Uses the ``pesq`` package at 16 kHz; other sample rates are resampled first
    (``torchaudio.functional.resample``). Signals need speech-like activity: PESQ raises on
    silence ("no utterances"), reported here as ValueError.
    """
    try:
        import pesq as pesq_lib
    except ImportError as exc:
        raise ImportError("pesq_wb needs the 'pesq' package: pip install pesq (it builds a C extension)") from exc
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    r, e = _wave_pair(ref, est)
    if r.shape[1] != 1:
        raise ValueError(f"pesq_wb takes mono audio, got {r.shape[1]} channels")
    r, e = r[:, 0], e[:, 0]
    if sample_rate != 16000:
        import torchaudio

        r = torchaudio.functional.resample(r, sample_rate, 16000)
        e = torchaudio.functional.resample(e, sample_rate, 16000)
    out = []
    for i in range(r.shape[0]):
        ri, ei = r[i].cpu().numpy(), e[i].cpu().numpy()
        if not ri.any():
            raise ValueError(f"ref item {i} is silent; PESQ is undefined")
        try:
            out.append(float(pesq_lib.pesq(16000, ri, ei, "wb")))
        except pesq_lib.PesqError as exc:
            raise ValueError(f"PESQ failed on item {i}: {type(exc).__name__}: {exc}") from exc
    return torch.tensor(out, dtype=_F64)
