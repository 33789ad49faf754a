"""The samplers against tta's contract (its conformance kit), against diffusers' DPM-Solver++
on identical levels, and on a tiny trained model: with 20 steps they land closer to a
500-step DDIM reference than 20 DDIM steps do."""

import pytest
import torch

from tta_core.plugin import build_component
from tta_core.testing.conformance import check_sampler, gaussian_denoiser

from tta_fast_samplers.samplers import DPMSolverPP2M, Euler, Heun, PNDM

SAMPLERS = {"dpmpp_2m": DPMSolverPP2M(), "euler": Euler(), "heun": Heun(), "pndm": PNDM()}
PROCESSES = {
    "vp_discrete": {"type": "vp_discrete", "betas": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                    "spacing": "trailing"},  # every step count starts at t = 999, as the reference
    "v_diffusion": {"type": "v_diffusion"},
}


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_honours_the_contract_with_every_process(name, process):
    schedule = build_component("process", PROCESSES[process]).schedule(20)
    check_sampler(SAMPLERS[name], schedule)


def test_the_plugin_registers_them_under_their_names():
    for name, sampler in SAMPLERS.items():
        assert type(build_component("sampler", {"type": name})) is type(sampler)
    with pytest.raises(ValueError, match="order"):
        build_component("sampler", {"type": "pndm", "order": 5})


def test_euler_takes_ddims_steps():
    ddim = build_component("sampler", {"type": "ddim"})
    denoise = gaussian_denoiser()
    for process in PROCESSES.values():
        schedule = build_component("process", process).schedule(12)
        x_T = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(Euler()(denoise, x_T, schedule), ddim(denoise, x_T, schedule), atol=1e-5)


def test_dpmpp_2m_matches_diffusers_on_the_same_levels():
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    sched.set_timesteps(20)
    ab = sched.alphas_cumprod
    levels = [(ab[t].sqrt(), (1 - ab[t]).sqrt()) for t in sched.timesteps.tolist()] + [(1.0, 0.0)]
    schedule = torch.tensor([[float(a), float(s)] for a, s in levels], dtype=torch.float64)
    denoise = gaussian_denoiser(mean=0.3, std=0.7)
    x_T = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))

    x = x_T.clone()
    for t in sched.timesteps:
        a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
        eps = (x - a * denoise(x, a.expand(2), s.expand(2))) / s
        x = sched.step(eps, t, x).prev_sample
    ours = DPMSolverPP2M()(denoise, x_T, schedule)
    assert torch.allclose(ours, x, atol=1e-4)


class ToyDenoiser(torch.nn.Module):
    """A small MLP denoiser for [B, 2, 8] latents: (x, t, cond) -> network output."""

    def __init__(self, t_scale: float):
        super().__init__()
        self.t_scale = t_scale
        self.net = torch.nn.Sequential(torch.nn.Linear(17, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                                       torch.nn.SiLU(), torch.nn.Linear(128, 16))

    def forward(self, x, t, cond=None):
        h = torch.cat([x.flatten(1), (t.float() / self.t_scale)[:, None]], dim=1)
        return self.net(h).view_as(x)


def toy_data(n: int, generator: torch.Generator) -> torch.Tensor:
    """Four prototype patterns plus a little noise: a distribution whose ODE bends."""
    protos = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-0.5, -1.0]])
    pattern = torch.sin(torch.arange(8) * 0.8)
    pick = protos[torch.randint(4, (n,), generator=generator)]
    return pick[:, :, None] * pattern + 0.05 * torch.randn(n, 2, 8, generator=generator)


@pytest.fixture(scope="module", params=list(PROCESSES))
def trained(request):
    process = build_component("process", PROCESSES[request.param])
    torch.manual_seed(0)
    net = ToyDenoiser(t_scale=1000.0 if request.param == "vp_discrete" else 1.0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        loss = process.loss(net, toy_data(256, g), None, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return request.param, process, net.eval()


def test_with_20_steps_the_fast_samplers_land_closer_to_a_500_step_reference_than_ddim(trained):
    name, process, net = trained
    denoise = process.denoiser(net, None)
    ddim = build_component("sampler", {"type": "ddim"})
    x_T = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(1))
    reference = ddim(denoise, x_T, process.schedule(500))

    def distance(x):
        return float((x - reference).pow(2).mean().sqrt())

    d = {n: distance(s(denoise, x_T, process.schedule(20))) for n, s in {"ddim": ddim, **SAMPLERS}.items()}
    print(name, {k: round(v, 4) for k, v in d.items()})
    # measured (RMS distance to the reference): vp_discrete ddim 0.048, dpmpp_2m 0.028, heun 0.031,
    # pndm 0.013; v_diffusion ddim 0.019, dpmpp_2m 0.005, heun 0.004, pndm 0.001
    assert d["dpmpp_2m"] < 0.8 * d["ddim"], d
    assert d["heun"] < d["ddim"] and d["pndm"] < d["ddim"], d
