"""Classifier-free guidance around a process's denoise."""

import pytest
import torch

from tta_core.diffusion import DDIM, Guidance, VDiffusion, VPDiscrete, guided_denoiser
from tta_core.interfaces import Conditioning


class CountingNet(torch.nn.Module):
    """Output depends on x, t and the pooled conditioning; records each call's batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.film = torch.nn.Linear(3, 2)
        self.batches = []

    def forward(self, x, t, cond):
        self.batches.append(x.shape[0])
        return 0.5 * x + torch.tanh(self.film(cond.pooled))[:, :, None] * (1 + t[:, None, None] / 1000)


def _conds(batch=2):
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(tokens=torch.randn(batch, 5, 3, generator=g), pooled=torch.randn(batch, 3, generator=g))
    uncond = Conditioning(tokens=torch.zeros(batch, 1, 3), pooled=torch.zeros(batch, 3))
    return cond, uncond


PROCESS = VPDiscrete(betas="scaled_linear", beta_start=0.0015, beta_end=0.0195, steps_offset=1)
X = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(1))
LEVEL = (PROCESS.schedule(10)[3, 0].expand(2), PROCESS.schedule(10)[3, 1].expand(2))


def test_scale_one_is_the_conditional_forward_alone():
    net, (cond, uncond) = CountingNet(), _conds()
    guided = guided_denoiser(PROCESS, net, cond, uncond, Guidance(scale=1.0))
    plain = PROCESS.denoiser(net, cond)
    assert torch.equal(guided(X, *LEVEL), plain(X, *LEVEL))
    assert net.batches == [2, 2]  # never the doubled batch: the unconditional half is skipped


def test_guided_output_is_one_batched_forward_combined_on_the_network_output():
    net, (cond, uncond) = CountingNet(), _conds()
    x0 = guided_denoiser(PROCESS, net, cond, uncond, Guidance(scale=3.0))(X, *LEVEL)
    assert net.batches == [4]  # conditional and unconditional halves in one call
    t = PROCESS.net_time(*LEVEL)
    out_c, out_u = net(X, t, cond), net(X, t, uncond)
    expected = PROCESS.to_x0(out_u + 3.0 * (out_c - out_u), X, *LEVEL)
    torch.testing.assert_close(x0, expected)


def test_rescale_matches_diffusers_rescale_noise_cfg():
    from diffusers.guiders.guider_utils import rescale_noise_cfg as reference

    net, (cond, uncond) = CountingNet(), _conds()
    x0 = guided_denoiser(PROCESS, net, cond, uncond, Guidance(scale=5.0, rescale=0.7))(X, *LEVEL)
    t = PROCESS.net_time(*LEVEL)
    out_c, out_u = net(X, t, cond), net(X, t, uncond)
    expected = PROCESS.to_x0(reference(out_u + 5.0 * (out_c - out_u), out_c, guidance_rescale=0.7), X, *LEVEL)
    torch.testing.assert_close(x0, expected)
    plain = guided_denoiser(PROCESS, net, cond, uncond, Guidance(scale=5.0))(X, *LEVEL)
    assert not torch.allclose(x0, plain, atol=1e-4)


def test_interval_guides_only_inside_the_band():
    net, (cond, uncond) = CountingNet(), _conds()
    schedule = VDiffusion().schedule(4)  # sigma: 1, .92, .71, .38, 0
    process = VDiffusion()
    banded = guided_denoiser(process, net, cond, uncond, Guidance(scale=4.0, interval=(0.5, 0.8)))
    full = guided_denoiser(process, net, cond, uncond, Guidance(scale=4.0))
    plain = process.denoiser(net, cond)
    for alpha, sigma in schedule[:-1]:
        level = (alpha.expand(2), sigma.expand(2))
        expected = full if 0.5 <= sigma <= 0.8 else plain
        torch.testing.assert_close(banded(X, *level), expected(X, *level))
    # a whole sampling run differs from both unbanded runs
    x_T = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(3))
    runs = [DDIM()(d, x_T, process.schedule(8)) for d in (banded, full, plain)]
    assert not torch.allclose(runs[0], runs[1], atol=1e-4) and not torch.allclose(runs[0], runs[2], atol=1e-4)


def test_guidance_options_are_checked():
    with pytest.raises(ValueError, match="rescale"):
        Guidance(scale=3.0, rescale=1.5)
    with pytest.raises(ValueError, match="lo <= hi"):
        Guidance(scale=3.0, interval=(0.8, 0.2))
