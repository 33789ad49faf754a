"""The edm process against tta's contract (its conformance kit, every built-in sampler on its
schedule) and against the paper's preconditioning formulas."""

import math

import pytest
import torch

from tta_core.plugin import build_component
from tta_core.testing.conformance import check_process, check_sampler

from tta_edm.process import EDM

SAMPLERS = ["ddpm", "ddim", "vsampler"]


@pytest.mark.parametrize("settings", [{}, {"sigma_max": 20.0, "sigma_data": 1.0, "rho": 3.0}])
def test_edm_honours_the_process_contract(settings):
    check_process(EDM(**settings))


def test_the_plugin_registers_edm():
    process = build_component("process", {"type": "edm", "sigma_max": 40.0})
    assert isinstance(process, EDM) and process.sigma_max == 40.0
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        build_component("process", {"type": "edm", "sigma_min": 1.0, "sigma_max": 0.5})


def test_the_schedule_is_karras_rho_7_from_sigma_max_to_zero():
    schedule = EDM().schedule(18)
    assert schedule.shape == (19, 2) and schedule.dtype == torch.float32
    assert torch.equal(schedule[:, 0], torch.ones(19))
    sigma = schedule[:, 1].double()
    assert sigma[0].item() == pytest.approx(80.0) and sigma[-2].item() == pytest.approx(0.002)
    assert sigma[-1].item() == 0.0 and bool((sigma[1:] < sigma[:-1]).all())
    # eq. 5 at i = 9 of N = 18
    ramp = 9 / 17
    expected = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert sigma[9].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_built_in_sampler_samples_the_edm_schedule(name):
    check_sampler(build_component("sampler", {"type": name}), EDM().schedule(24))


class Recorder(torch.nn.Module):
    """F = a fixed affine map of its input and time; records what it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append((x.clone(), t.clone()))
        return 0.3 * x - 0.1 + t[:, None, None]


def test_the_denoiser_is_c_skip_x_plus_c_out_f_of_c_in_x():
    process, net = EDM(), Recorder()
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)) * 10
    sigma = torch.tensor([10.0, 0.05])
    x0 = process.denoiser(net, None)(x, torch.ones(2), sigma)
    for i, s in enumerate(sigma.tolist()):
        total = s**2 + 0.25
        c_skip, c_out, c_in, c_noise = 0.25 / total, s * 0.5 / math.sqrt(total), 1 / math.sqrt(total), math.log(s) / 4
        seen_x, seen_t = net.seen[0][0][i], net.seen[0][1][i]
        torch.testing.assert_close(seen_x, c_in * x[i])  # the network never sees x itself
        assert seen_t.item() == pytest.approx(c_noise, rel=1e-6)
        f = 0.3 * c_in * x[i] - 0.1 + c_noise
        torch.testing.assert_close(x0[i], c_skip * x[i] + c_out * f)
    assert len(net.seen) == 1  # one network call per denoise
    f = 0.3 * net.seen[0][0] - 0.1 + net.seen[0][1][:, None, None]
    torch.testing.assert_close(process.to_x0(f, x, torch.ones(2), sigma), x0)  # the same D from F's output
    clean = process.denoiser(net, None)(x, torch.ones(2), torch.zeros(2))
    assert torch.equal(clean, x)  # at the schedule's clean end, D is x itself


def test_a_level_with_alpha_below_one_is_read_as_its_variance_exploding_equivalent():
    process, net = EDM(), Recorder()
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    denoise = process.denoiser(net, None)
    alpha, sigma = torch.full((2,), 0.6), torch.full((2,), 0.8)
    torch.testing.assert_close(denoise(x, alpha, sigma), denoise(x / 0.6, torch.ones(2), sigma / 0.6))


def test_training_pairs_and_the_loss():
    process = EDM()
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0)) * 0.5
    pair = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pair.x_t, x0 + pair.sigma[:, None] * pair.noise)
    assert torch.equal(pair.alpha, torch.ones(4096))
    log_sigma = pair.sigma.log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.1 and abs(log_sigma.std().item() - 1.2) < 0.1
    # the target is what makes D exact: c_skip x_t + c_out target = x0
    c_skip, c_out, _, c_noise = process.scalings(pair.sigma[:, None])
    torch.testing.assert_close(c_skip * pair.x_t + c_out * pair.target, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair.t, c_noise[:, 0])
    again = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.x_t, pair.x_t)

    net = torch.nn.Linear(2, 2)
    torch.manual_seed(0)

    def f(x, t, cond):
        return net(x) + t[:, None]

    loss = process.loss(f, x0, None, generator=torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    # lambda(sigma) |D - x0|^2 is F's plain squared error against its target
    c_in = (pair.sigma[:, None] ** 2 + 0.25).rsqrt()
    plain = (f(c_in * pair.x_t, pair.t, None) - pair.target).pow(2).mean()
    assert loss.item() == pytest.approx(plain.item(), rel=1e-3)
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
