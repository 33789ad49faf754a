"""The conformance kit accepts components that honour their contract and catches ones that don't."""

import math

import pytest
import torch

from tta_core.interfaces import Conditioning
from tta_core.testing.conformance import (
    ConformanceError, check_autoencoder, check_conditioner, check_denoiser, check_sampler, check_vocoder,
)


class ToyDenoiser(torch.nn.Module):
    def __init__(self, channels=4, width=8, mix_batch=False, ignore_t=False):
        super().__init__()
        self.conv = torch.nn.Conv1d(channels, channels, 3, padding=1)
        self.cond = torch.nn.Linear(width, channels)
        self.mix_batch, self.ignore_t = mix_batch, ignore_t

    def forward(self, x, t, cond):
        h = self.conv(x) + self.cond(cond.pooled)[..., None]
        if not self.ignore_t:
            h = h * torch.cos(t)[:, None, None]
        return h - h.mean(0, keepdim=True) if self.mix_batch else h


class ToyConditioner(torch.nn.Module):
    def __init__(self, width=8, wrong_batch=False):
        super().__init__()
        self.embed = torch.nn.Embedding(256, width)
        self.wrong_batch = wrong_batch

    def encode_text(self, texts):
        ids = [torch.tensor(list(t.encode()[:16])) for t in texts]
        length = max(len(i) for i in ids)
        tokens = torch.stack([torch.nn.functional.pad(i, (0, length - len(i))) for i in ids])
        mask = torch.stack([torch.arange(length) < len(i) for i in ids])
        emb = self.embed(tokens)
        pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        if self.wrong_batch:
            pooled = pooled[:1]
            emb, mask = emb[:1], mask[:1]
        return Conditioning(tokens=emb, mask=mask, pooled=pooled)

    def null(self, batch):
        width = self.embed.embedding_dim
        return Conditioning(tokens=torch.zeros(batch, 1, width), mask=torch.zeros(batch, 1, dtype=torch.bool),
                            pooled=torch.zeros(batch, width))


class ToyAutoencoder(torch.nn.Module):
    domain = "mel"

    def __init__(self, lie=False):
        super().__init__()
        self.enc = torch.nn.Conv2d(1, 2, 2, stride=2)
        self.dec = torch.nn.ConvTranspose2d(2, 1, 2, stride=2)
        self.lie = lie

    def latent_shape(self, n):
        return (2, n // 2 + (1 if self.lie else 0), 4)

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)


class ToyVocoder:
    sample_rate, hop_length = 16000, 160

    def __call__(self, mel):
        return mel.mean(-1).repeat_interleave(self.hop_length, dim=-1)[:, 0]


def ddim(denoise, x, schedule, *, generator=None, callback=None):
    for i in range(len(schedule) - 1):
        (a, s), (a_next, s_next) = schedule[i], schedule[i + 1]
        x0 = denoise(x, a.expand(len(x)), s.expand(len(x)))
        eps = (x - a * x0) / s
        x = a_next * x0 + s_next * eps
        if callback:
            callback(i, len(schedule) - 1, x)
    return x


def cosine_schedule(steps):
    t = torch.linspace(1, 0, steps + 1) * 0.999
    return torch.stack([torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)], dim=1)


def pooled(batch=3, width=8):
    return Conditioning(pooled=torch.randn(batch, width))


def test_good_components_pass():
    torch.manual_seed(0)
    check_denoiser(ToyDenoiser(), torch.randn(3, 4, 16), pooled())
    check_conditioner(ToyConditioner())
    check_autoencoder(ToyAutoencoder(), torch.randn(2, 1, 8, 8))
    check_vocoder(ToyVocoder(), torch.randn(2, 1, 10, 64))
    check_sampler(ddim, cosine_schedule(50))


def test_batch_mixing_denoiser_is_caught():
    with pytest.raises(ConformanceError, match="depends on the other items"):
        check_denoiser(ToyDenoiser(mix_batch=True), torch.randn(3, 4, 16), pooled())


def test_denoiser_ignoring_t_is_caught():
    with pytest.raises(ConformanceError, match="does not depend on t"):
        check_denoiser(ToyDenoiser(ignore_t=True), torch.randn(3, 4, 16), pooled())


def test_conditioner_with_wrong_batch_is_caught():
    with pytest.raises(ConformanceError, match="returned batch 1, expected 2"):
        check_conditioner(ToyConditioner(wrong_batch=True))


def test_autoencoder_whose_latent_shape_lies_is_caught():
    with pytest.raises(ConformanceError, match="latent_shape"):
        check_autoencoder(ToyAutoencoder(lie=True), torch.randn(2, 1, 8, 8))


def test_stateful_sampler_is_caught():
    calls = {"n": 0}

    def stateful(denoise, x, schedule, *, generator=None, callback=None):
        calls["n"] += 1
        return ddim(denoise, x, schedule, callback=callback) + calls["n"] * 1e-3

    with pytest.raises(ConformanceError, match="hidden state"):
        check_sampler(stateful, cosine_schedule(20))


def test_sampler_that_does_not_denoise_is_caught():
    def lazy(denoise, x, schedule, *, generator=None, callback=None):
        if callback:
            callback(0, 1, x)
        return x

    with pytest.raises(ConformanceError, match="samples of N"):
        check_sampler(lazy, cosine_schedule(20))


def test_conditioning_validates_its_shapes():
    with pytest.raises(ValueError, match="mask must be"):
        Conditioning(tokens=torch.zeros(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs tokens, pooled"):
        Conditioning()
    a = Conditioning(tokens=torch.ones(1, 2, 4))
    b = Conditioning(tokens=torch.ones(2, 5, 4), mask=torch.ones(2, 5, dtype=torch.bool))
    both = Conditioning.cat([a, b])
    assert both.tokens.shape == (3, 5, 4) and both.mask[0].tolist() == [True, True, False, False, False]
    assert both.to(torch.float64).mask.dtype is torch.bool and both.to(torch.float64).tokens.dtype is torch.float64
