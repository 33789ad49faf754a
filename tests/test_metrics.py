"""The metric maths of tta_core.eval.metrics: defining properties, closed forms, independent references."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tta_core.eval.metrics import (
    GaussianStats,
    clap_score,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    kl_divergence,
    kl_divergence_from_logits,
    lsd,
    mel_l1,
    pesq_wb,
    psnr,
    si_sdr,
    ssim,
)

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def embeddings(n: int, d: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Correlated (non-diagonal covariance) float32 embeddings [n, d]."""
    g = gen(seed)
    mix = torch.randn(d, d, generator=g) / math.sqrt(d)
    return (torch.randn(n, d, generator=g) @ mix + torch.randn(d, generator=g)) * scale + shift


# ----------------------------------------------------------------------------- GaussianStats


def test_stats_match_torch_mean_and_unbiased_cov():
    x = embeddings(300, 6)
    s = GaussianStats.from_embeddings(x)
    assert s.n == 300 and s.sum.dtype == F64
    torch.testing.assert_close(s.mean, x.double().mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.cov, torch.cov(x.double().T, correction=1), rtol=1e-10, atol=1e-12)


def test_stats_merged_from_halves_equal_the_whole():
    x = embeddings(301, 7, seed=1)
    whole = GaussianStats.from_embeddings(x)
    a = GaussianStats.from_embeddings(x[:120])
    b = GaussianStats().add(x[120:200]).add(x[200:])
    for merged in (a.merge(b), a + b, b + a, GaussianStats() + a + b):
        assert merged.n == whole.n
        torch.testing.assert_close(merged.sum, whole.sum, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(merged.sum_outer, whole.sum_outer, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(merged.cov, whole.cov, rtol=1e-10, atol=1e-12)
    assert a.n == 120  # merge makes a new object


def test_stats_dict_round_trip_and_all_reduce_shape():
    s = GaussianStats.from_embeddings(embeddings(50, 4))
    d = s.to_dict()
    assert set(d) == {"n", "sum", "sum_outer"} and all(isinstance(v, torch.Tensor) for v in d.values())
    saved = {k: v.clone() for k, v in d.items()}
    back = GaussianStats.from_dict(saved)
    assert back.n == 50
    torch.testing.assert_close(back.cov, s.cov)
    back.add(torch.ones(3, 4))  # accumulating must not write into the tensors it was built from
    torch.testing.assert_close(saved["sum"], s.sum, rtol=0, atol=0)
    assert back.n == 53
    # an all-reduce SUM of two ranks' dicts is the merge; an empty rank contributes zeros
    empty = GaussianStats.empty(4).to_dict()
    summed = GaussianStats.from_dict({k: d[k] + d[k] + empty[k] for k in d})
    torch.testing.assert_close(summed.cov, (s + s).cov)
    assert summed.n == 100


def test_stats_bad_input_raises():
    with pytest.raises(ValueError, match="at least 2 items"):
        _ = GaussianStats.from_embeddings(torch.ones(1, 3)).cov
    with pytest.raises(ValueError, match="no items"):
        _ = GaussianStats().mean
    with pytest.raises(ValueError, match="NaN"):
        GaussianStats.from_embeddings(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        GaussianStats().add(torch.ones(3))
    with pytest.raises(ValueError, match="dimension"):
        GaussianStats.from_embeddings(torch.ones(2, 3)).add(torch.ones(2, 4))
    with pytest.raises(ValueError, match="dimension"):
        GaussianStats.from_embeddings(torch.ones(2, 3)) + GaussianStats.from_embeddings(torch.ones(2, 4))


# ----------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("n, d", [(500, 8), (40, 96)])  # the second has rank-deficient covariances
def test_fd_identical_sets_is_zero(n, d):
    s = GaussianStats.from_embeddings(embeddings(n, d, scale=3.0))
    assert abs(frechet_distance_from_stats(s, s)) < 1e-8
    t = GaussianStats.from_embeddings(embeddings(n, d, scale=3.0))  # same data, separately accumulated
    assert abs(frechet_distance_from_stats(s, t)) < 1e-8


def test_fd_pure_mean_shift_is_squared_norm():
    x = embeddings(400, 10, seed=2).double()
    v = torch.randn(10, generator=gen(3), dtype=F64) * 2
    fd = frechet_distance_from_stats(GaussianStats.from_embeddings(x), GaussianStats.from_embeddings(x + v))
    assert fd == pytest.approx(float(v @ v), rel=1e-9)


def test_fd_diagonal_gaussians_closed_form():
    # For diagonal C = diag(s^2): tr C1 + tr C2 - 2 tr sqrt(C1^1/2 C2 C1^1/2) = sum (s1^2 + s2^2 - 2 s1 s2)
    m1, m2 = torch.tensor([0.0, 1.0, -2.0, 3.0], dtype=F64), torch.tensor([1.0, 1.0, 0.5, -1.0], dtype=F64)
    s1, s2 = torch.tensor([1.0, 0.5, 2.0, 3.0], dtype=F64), torch.tensor([2.0, 0.5, 0.1, 1.0], dtype=F64)
    expected = float(((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum())  # 1+0+6.25+16 + 1+0+3.61+4
    assert expected == pytest.approx(31.86)
    fd = frechet_distance(m1, torch.diag(s1**2), m2, torch.diag(s2**2))
    assert fd == pytest.approx(expected, rel=1e-12)


def test_fd_symmetric_and_scales_with_c_squared():
    x, y = embeddings(300, 12, seed=4), embeddings(250, 12, seed=5, scale=1.5, shift=0.3)
    sx, sy = GaussianStats.from_embeddings(x), GaussianStats.from_embeddings(y)
    ab, ba = frechet_distance_from_stats(sx, sy), frechet_distance_from_stats(sy, sx)
    assert ab > 1.0
    assert ab == pytest.approx(ba, rel=1e-10)
    c = 3.7
    scaled = frechet_distance_from_stats(GaussianStats.from_embeddings(x.double() * c),
                                         GaussianStats.from_embeddings(y.double() * c))
    assert scaled == pytest.approx(c**2 * ab, rel=1e-9)


def test_fd_matches_an_exact_data_space_formula_even_when_rank_deficient():
    # With centred data X, Y (n rows), the eigenvalues of C1^1/2 C2 C1^1/2 equal the squared singular
    # values of X Y^T / (n - 1): an n x n problem with no matrix square root at all.
    n, d = 60, 150
    x, y = embeddings(n, d, seed=6).double(), embeddings(n, d, seed=7, scale=2.0).double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    exact = float(((x.mean(0) - y.mean(0)) ** 2).sum() + (xc**2).sum() / (n - 1) + (yc**2).sum() / (n - 1)
                  - 2 * torch.linalg.svdvals(xc @ yc.T / (n - 1)).sum())
    fd = frechet_distance_from_stats(GaussianStats.from_embeddings(x), GaussianStats.from_embeddings(y))
    assert fd == pytest.approx(exact, rel=1e-10)


def test_fd_matches_scipy_sqrtm_reference():
    linalg = pytest.importorskip("scipy.linalg")
    x, y = embeddings(500, 16, seed=8), embeddings(400, 16, seed=9, scale=0.7, shift=1.0)
    sx, sy = GaussianStats.from_embeddings(x), GaussianStats.from_embeddings(y)
    c1, c2 = sx.cov.numpy(), sy.cov.numpy()
    diff = (sx.mean - sy.mean).numpy()
    covmean = linalg.sqrtm(c1 @ c2).real
    ref = diff @ diff + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
    assert frechet_distance_from_stats(sx, sy) == pytest.approx(float(ref), rel=1e-8)


def test_fd_bad_input_raises():
    mu, cov = torch.zeros(3), torch.eye(3)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu, cov, torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, cov, mu, torch.diag(torch.tensor([1.0, -1.0, 1.0])))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(mu, cov, mu, torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.tensor([0.0, float("nan"), 0.0]), cov, mu, cov)


# ----------------------------------------------------------------------------- KL


def test_kl_direction_on_a_textbook_pair():
    p, q = torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([0.9, 0.1], dtype=F64)
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # = ln(5/3) = 0.5108
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # = 0.3681
    assert kl_pq == pytest.approx(math.log(5 / 3)) and abs(kl_pq - kl_qp) > 0.1
    res = kl_divergence({"a.wav": q}, {"a.wav": p})  # generated q, reference p
    assert res.ref_to_gen == pytest.approx(kl_pq, rel=1e-12)
    assert res.gen_to_ref == pytest.approx(kl_qp, rel=1e-12)
    # audioldm_eval: F.kl_div(log(generated), reference, reduction="sum") / n_pairs
    audioldm = float(F.kl_div(q.log().unsqueeze(0), p.unsqueeze(0), reduction="sum"))
    assert res.ref_to_gen == pytest.approx(audioldm, rel=1e-12)
    assert res.n_pairs == 1 and res.per_item == {"a.wav": pytest.approx(kl_pq)}


def test_kl_pairs_by_name_mean_over_pairs_and_reports_unpaired():
    p, q, u = [torch.tensor(v, dtype=F64) for v in ([0.5, 0.5], [0.9, 0.1], [0.2, 0.8])]
    gen_probs = {"b": u, "a": q, "only_gen": p}
    ref_probs = {"a": p, "only_ref": q, "b": p}  # insertion orders differ on purpose
    res = kl_divergence(gen_probs, ref_probs)
    kl_a = float((p * (p / q).log()).sum())
    kl_b = float((p * (p / u).log()).sum())
    assert res.n_pairs == 2
    assert res.ref_to_gen == pytest.approx((kl_a + kl_b) / 2, rel=1e-12)
    assert res.per_item == {"a": pytest.approx(kl_a), "b": pytest.approx(kl_b)}
    assert res.only_in_gen == ["only_gen"] and res.only_in_ref == ["only_ref"]
    with pytest.raises(ValueError, match="unpaired"):
        kl_divergence(gen_probs, ref_probs, strict=True)
    with pytest.raises(ValueError, match="no names in common"):
        kl_divergence({"x": p}, {"y": p})
    with pytest.raises(ValueError, match="empty"):
        kl_divergence({}, {"y": p})


def test_kl_zero_probabilities():
    p = torch.tensor([1.0, 0.0], dtype=F64)
    q = torch.tensor([0.5, 0.5], dtype=F64)
    res = kl_divergence({"a": q}, {"a": p})
    assert res.ref_to_gen == pytest.approx(math.log(2))  # 0 log 0 = 0: finite
    assert res.gen_to_ref == math.inf  # q has mass where p has none
    assert math.isfinite(kl_divergence({"a": q}, {"a": p}, eps=1e-6).gen_to_ref)
    assert kl_divergence({"a": p}, {"a": p}).ref_to_gen == 0.0


def test_kl_from_logits_reproduces_audioldm_eval_formulas():
    g = gen(10)
    gl, rl = torch.randn(5, 527, generator=g, dtype=F64) * 3, torch.randn(5, 527, generator=g, dtype=F64) * 3
    names = [f"{i}.wav" for i in range(5)]
    gen_l, ref_l = dict(zip(names, gl)), dict(zip(names, rl))
    soft = kl_divergence_from_logits(gen_l, ref_l)
    expected = F.kl_div((gl.softmax(1) + 1e-6).log(), rl.softmax(1), reduction="sum") / 5
    assert soft.ref_to_gen == pytest.approx(float(expected), rel=1e-10)
    sig = kl_divergence_from_logits(gen_l, ref_l, activation="sigmoid")
    expected = F.kl_div((gl.sigmoid() + 1e-6).log(), rl.sigmoid(), reduction="sum") / 5
    assert sig.ref_to_gen == pytest.approx(float(expected), rel=1e-10)
    assert soft.ref_to_gen != pytest.approx(soft.gen_to_ref, rel=1e-3)


def test_kl_bad_input_raises():
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="not 1"):
        kl_divergence({"a": torch.tensor([0.5, 0.6])}, {"a": p})
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence({"a": torch.tensor([float("nan"), 0.5])}, {"a": p})
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence({"a": torch.tensor([0.2, 0.3, 0.5])}, {"a": p})
    with pytest.raises(ValueError, match="negative"):
        kl_divergence({"a": torch.tensor([1.5, -0.5])}, {"a": p})


# ----------------------------------------------------------------------------- Inception score


def test_is_uniform_predictions_is_one():
    mean, std = inception_score(torch.full((100, 7), 1 / 7), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_confident_balanced_predictions_is_the_class_count():
    c = 5
    probs = F.one_hot(torch.arange(500) % c, c).float()  # every split of 50 holds 10 of each class
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(c, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_collapsed_predictions_is_one_not_nan():
    probs = F.one_hot(torch.full((64,), 3), 10).float()
    mean, std = inception_score(probs, splits=4)
    assert mean == 1.0 and std == 0.0


def test_is_contiguous_splits_and_population_std():
    n, c, splits = 23, 6, 4  # 23 // 4 is not whole: chunks [0,5) [5,11) [11,17) [17,23)
    p = torch.distributions.Dirichlet(torch.full((c,), 0.3)).sample((n,)).double()
    p = p.clamp(min=1e-12)
    p = p / p.sum(1, keepdim=True)
    a = p.numpy()
    scores = []
    for lo, hi in ((0, 5), (5, 11), (11, 17), (17, 23)):
        chunk = a[lo:hi]
        py = chunk.mean(0)
        scores.append(np.exp(np.mean(np.sum(chunk * np.log(chunk / py), axis=1))))
    mean, std = inception_score(p, splits=splits)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)
    assert std != pytest.approx(np.std(scores, ddof=1), rel=1e-3)
    # shuffle_seed: numpy's RandomState permutation first (audioldm_eval / torch-fidelity use 2020)
    order = np.random.RandomState(2020).permutation(n)
    assert inception_score(p, splits, shuffle_seed=2020) == pytest.approx(inception_score(p[order], splits))
    assert inception_score(p, splits, shuffle_seed=2020)[0] != pytest.approx(mean, rel=1e-6)


def test_is_bad_input_raises():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.full((5, 2), 0.5), splits=6)
    with pytest.raises(ValueError, match="not 1"):
        inception_score(torch.full((5, 2), 0.4), splits=1)
    with pytest.raises(ValueError, match="empty"):
        inception_score(torch.zeros(0, 3), splits=1)


# ----------------------------------------------------------------------------- CLAP score


@pytest.mark.parametrize("batch_size", [1, 7, 32, 50, 1000])
def test_clap_score_batches_count_every_item_once(batch_size):
    g = gen(11)
    text, audio = torch.randn(50, 16, generator=g), torch.randn(50, 16, generator=g)
    audio[:25] += 2 * text[:25]  # uneven similarities, so a wrongly weighted last batch shows
    expected = float(F.cosine_similarity(text.double(), audio.double(), dim=1).mean())
    assert clap_score(text, audio, batch_size=batch_size) == pytest.approx(expected, rel=1e-12)


def test_clap_score_known_values_and_errors():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    a = torch.tensor([[5.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    assert clap_score(t, a, batch_size=2) == pytest.approx((1 - 1 + 1 / math.sqrt(2)) / 3)
    with pytest.raises(ValueError, match="zero-norm"):
        clap_score(t, torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), batch_size=2)
    with pytest.raises(ValueError, match="same shape"):
        clap_score(t, a[:2])
    with pytest.raises(ValueError, match="batch_size"):
        clap_score(t, a, batch_size=0)


# ----------------------------------------------------------------------------- reconstruction


def power_spec(b=2, t=20, f=33, seed=12) -> torch.Tensor:
    return torch.rand(b, 1, t, f, generator=gen(seed), dtype=F64) * 0.999 + 1e-3


def test_lsd_definition():
    ref = power_spec()
    assert torch.equal(lsd(ref, ref), torch.zeros(2, dtype=F64))
    torch.testing.assert_close(lsd(ref, ref * 10), torch.ones(2, dtype=F64), rtol=1e-8, atol=0)  # 1 bel
    est = ref.clone()
    est[:, :, : ref.shape[2] // 2] *= 100  # half the frames off by 2 bels, half exact
    # mean over frames of per-frame RMS: 1.0 (an RMS over everything would give sqrt(2))
    torch.testing.assert_close(lsd(ref, est), torch.ones(2, dtype=F64), rtol=1e-8, atol=0)
    torch.testing.assert_close(lsd(ref[:, 0], est[:, 0]), lsd(ref, est))  # [B, T, F] == [B, 1, T, F]
    with pytest.raises(ValueError, match="negative"):
        lsd(ref.log(), ref)
    with pytest.raises(ValueError, match="same shape"):
        lsd(ref, ref[:, :, :-1])


def test_mel_l1_and_psnr_formulas():
    ref = torch.linspace(-11.0, -1.0, 2 * 64 * 10, dtype=F64).reshape(2, 1, 10, 64)
    per_item_range = ref.reshape(2, -1).amax(1) - ref.reshape(2, -1).amin(1)
    torch.testing.assert_close(mel_l1(ref, ref + 0.25), torch.full((2,), 0.25, dtype=F64))
    torch.testing.assert_close(mel_l1(ref, ref - 0.5), torch.full((2,), 0.5, dtype=F64))
    # constant error delta: MSE = delta^2, PSNR = 20 log10(R / delta), R = reference max - min
    expected = 20 * torch.log10(per_item_range / 0.1)
    torch.testing.assert_close(psnr(ref, ref + 0.1), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(psnr(ref, ref + 0.1, data_range=10.0), torch.full((2,), 40.0, dtype=F64),
                               rtol=1e-10, atol=1e-10)
    assert torch.isinf(psnr(ref, ref)).all() and (psnr(ref, ref) > 0).all()
    with pytest.raises(ValueError, match="constant"):
        psnr(torch.zeros(2, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        psnr(ref, ref * float("nan"))


def test_ssim_identical_is_one_and_worse_with_noise():
    ref = torch.randn(3, 1, 32, 24, generator=gen(13), dtype=F64).cumsum(2)
    torch.testing.assert_close(ssim(ref, ref), torch.ones(3, dtype=F64), rtol=0, atol=1e-12)
    noisy = ref + 0.5 * torch.randn(ref.shape, generator=gen(14), dtype=F64)
    noisier = ref + 2.0 * torch.randn(ref.shape, generator=gen(14), dtype=F64)
    assert (ssim(ref, noisier) < ssim(ref, noisy)).all() and (ssim(ref, noisy) < 1).all()
    torch.testing.assert_close(ssim(ref[:, 0], noisy[:, 0]), ssim(ref, noisy))
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(ref[:, :, :10], ref[:, :, :10])


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    ref = torch.randn(2, 40, 30, generator=gen(15), dtype=F64).cumsum(1) * 2 - 5
    est = ref + 0.7 * torch.randn(ref.shape, generator=gen(16), dtype=F64)
    ours = ssim(ref, est)
    for i in range(2):
        r, e = ref[i].numpy(), est[i].numpy()
        expected = metrics.structural_similarity(r, e, data_range=float(r.max() - r.min()), gaussian_weights=True,
                                                 sigma=1.5, use_sample_covariance=False)
        assert float(ours[i]) == pytest.approx(expected, rel=1e-10)


def test_si_sdr_scale_and_offset_invariant():
    g = gen(17)
    ref = torch.randn(3, 8000, generator=g, dtype=F64)
    est = ref + 0.3 * torch.randn(3, 8000, generator=g, dtype=F64)
    base = si_sdr(ref, est)
    torch.testing.assert_close(si_sdr(ref, 0.05 * est), base, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(si_sdr(ref, -20.0 * est + 3.0), base, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(si_sdr(ref.unsqueeze(1), est.unsqueeze(1)), base)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_si_sdr_recovers_a_known_snr(snr_db):
    g = gen(18)
    ref = torch.randn(2, 160000, generator=g, dtype=F64)
    noise = torch.randn(2, 160000, generator=g, dtype=F64)
    ref, noise = ref - ref.mean(1, keepdim=True), noise - noise.mean(1, keepdim=True)
    gain = torch.sqrt(ref.pow(2).sum(1) / noise.pow(2).sum(1) / 10 ** (snr_db / 10)).unsqueeze(1)
    out = si_sdr(ref, ref + gain * noise)
    assert (out - snr_db).abs().max() < 0.1
    # with noise made exactly orthogonal to the reference the SNR is recovered to round-off
    orth = noise - (noise * ref).sum(1, keepdim=True) / ref.pow(2).sum(1, keepdim=True) * ref
    gain = torch.sqrt(ref.pow(2).sum(1) / orth.pow(2).sum(1) / 10 ** (snr_db / 10)).unsqueeze(1)
    torch.testing.assert_close(si_sdr(ref, ref + gain * orth), torch.full((2,), snr_db, dtype=F64),
                               rtol=0, atol=1e-8)


def test_si_sdr_identical_and_bad_input():
    ref = torch.randn(2, 4000, generator=gen(19), dtype=F64)
    assert torch.isinf(si_sdr(ref, ref)).all() and (si_sdr(ref, ref) > 0).all()
    assert (si_sdr(ref, ref + 1e-7 * torch.randn(ref.shape, generator=gen(20), dtype=F64)) > 100).all()
    with pytest.raises(ValueError, match="silent"):
        si_sdr(torch.ones(2, 100), torch.randn(2, 100))
    with pytest.raises(ValueError, match="silent"):
        si_sdr(torch.randn(2, 100), torch.zeros(2, 100))
    with pytest.raises(ValueError, match="same shape"):
        si_sdr(torch.randn(2, 100), torch.randn(2, 99))


def speech_like(sample_rate: int, seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Voiced 'syllables' (harmonics of a wobbling ~140 Hz pitch, formant-ish weights) with pauses."""
    g = gen(seed)
    t = torch.arange(int(sample_rate * seconds), dtype=F64) / sample_rate
    f0 = 140 + 20 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    voice = sum(torch.sin(k * phase) * math.exp(-((k * 140 - 500) / 600) ** 2) for k in range(1, 40))
    envelope = torch.sin(math.pi * 3.5 * t).clamp(min=0) ** 2
    return (0.3 * voice * envelope + 1e-3 * torch.randn(t.shape, generator=g, dtype=F64)).float()


def test_pesq_wb_orders_degradations():
    pytest.importorskip("pesq")
    ref = speech_like(16000).unsqueeze(0)
    noise = torch.randn(ref.shape, generator=gen(21)).float()
    noisy = ref + noise * ref.norm() / noise.norm() / 10 ** (10 / 20)  # 10 dB SNR
    scores = pesq_wb(torch.cat([ref, ref]), torch.cat([ref, noisy]), 16000)
    assert scores.shape == (2,) and scores.dtype == F64
    assert scores[0] > 4.0 and 1.0 <= scores[1] < scores[0] - 1.0
    # other rates are resampled to 16 kHz
    ref32 = speech_like(32000).unsqueeze(0)
    assert float(pesq_wb(ref32, ref32, 32000)[0]) > 4.0
    with pytest.raises(ValueError, match="silent"):
        pesq_wb(torch.zeros(1, 16000), torch.zeros(1, 16000), 16000)


def test_pesq_wb_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # import pesq -> ImportError
    with pytest.raises(ImportError, match="pip install pesq"):
        pesq_wb(torch.randn(1, 16000), torch.randn(1, 16000), 16000)
