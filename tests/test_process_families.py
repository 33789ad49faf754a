"""Any diffusion family through every sampler and guidance.

Two processes are written here as third-party code would write them (plain classes, only
``tta_core.plugin`` / ``tta_core.testing`` imported): a linear flow (alpha = 1 - t,
sigma = t, starting at alpha = 0) and a variance-exploding one (alpha = 1, sigma up to 80)
whose denoiser preconditions the network input. Every built-in sampler and every sampler of
examples/tta-fast-samplers samples their schedules and the built-in ``rectified_flow``'s;
guidance keeps a process's preconditioning; ``initial_noise`` starts at the first level; and
(slow) the quickstart trains a few steps and samples with each non-variance-preserving process.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from test_guidance import CountingNet, _conds
from tta_core.plugin import TrainingPair, build_component
from tta_core.testing.conformance import check_process, check_sampler, gaussian_denoiser

REPO = Path(__file__).resolve().parents[1]
FAST_SAMPLERS = REPO / "examples" / "tta-fast-samplers" / "src"


# -- the processes, as a third party writes them ---------------------------------------------------


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _randn(shape, generator, device):
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class LinearFlow:
    """x_t = (1 - t) x0 + t eps; the network sees t and predicts the velocity eps - x0."""

    def schedule(self, steps: int) -> torch.Tensor:
        t = torch.linspace(1.0, 0.0, steps + 1)
        return torch.stack([1 - t, t], dim=1)

    def net_time(self, alpha, sigma):
        return sigma / (alpha + sigma)

    def to_x0(self, output, x, alpha, sigma):
        return x - _col(sigma, x) * output

    def denoiser(self, net, cond):
        return lambda x, alpha, sigma: self.to_x0(net(x, self.net_time(alpha, sigma), cond), x, alpha, sigma)

    def training_pair(self, x0, *, generator=None):
        t = torch.rand(x0.shape[0], generator=generator).to(x0.device) if generator else torch.rand(x0.shape[0])
        noise = _randn(x0.shape, generator, x0.device)
        x_t = (1 - _col(t, x0)) * x0 + _col(t, x0) * noise
        return TrainingPair(x_t, t, noise - x0, 1 - t, t, noise)

    def loss(self, net, x0, cond, *, generator=None):
        pair = self.training_pair(x0, generator=generator)
        return torch.nn.functional.mse_loss(net(pair.x_t, pair.t, cond), pair.target)


class VarianceExploding:
    """x_t = x0 + sigma eps, sigma in [0.002, 80]; the network sees the input scaled to unit
    variance, x / sqrt(sigma^2 + 1), at time ln(sigma) / 4, and predicts eps."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def schedule(self, steps: int) -> torch.Tensor:
        sigma = torch.cat([torch.logspace(math.log10(self.sigma_max), math.log10(self.sigma_min), steps),
                           torch.zeros(1)])
        return torch.stack([torch.ones_like(sigma), sigma], dim=1)

    def net_time(self, alpha, sigma):
        return (sigma / alpha).clamp(min=1e-20).log() / 4  # finite at the clean end too

    def c_in(self, alpha, sigma):
        return (alpha**2 + sigma**2).rsqrt()

    def to_x0(self, output, x, alpha, sigma):
        return (x - _col(sigma, x) * output) / _col(alpha, x)

    def denoiser(self, net, cond):
        def denoise(x, alpha, sigma):
            eps = net(_col(self.c_in(alpha, sigma), x) * x, self.net_time(alpha, sigma), cond)
            return self.to_x0(eps, x, alpha, sigma)
        return denoise

    def training_pair(self, x0, *, generator=None):
        u = torch.rand(x0.shape[0], generator=generator).to(x0.device) if generator else torch.rand(x0.shape[0])
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** u
        noise = _randn(x0.shape, generator, x0.device)
        alpha = torch.ones_like(sigma)
        return TrainingPair(x0 + _col(sigma, x0) * noise, self.net_time(alpha, sigma), noise, alpha, sigma, noise)

    def loss(self, net, x0, cond, *, generator=None):
        pair = self.training_pair(x0, generator=generator)
        out = net(_col(self.c_in(pair.alpha, pair.sigma), x0) * pair.x_t, pair.t, cond)
        return torch.nn.functional.mse_loss(out, pair.target)


@pytest.mark.parametrize("process", [LinearFlow(), VarianceExploding()], ids=["linear_flow", "variance_exploding"])
def test_the_third_party_processes_honour_the_process_contract(process):
    check_process(process)


# -- every sampler on every family's schedule ---------------------------------------------------------


def _fast_samplers() -> dict:
    sys.path.insert(0, str(FAST_SAMPLERS))
    try:
        from tta_fast_samplers.samplers import DPMSolverPP2M, Euler, Heun, PNDM
    finally:
        sys.path.remove(str(FAST_SAMPLERS))
    return {"dpmpp_2m": DPMSolverPP2M(), "euler": Euler(), "heun": Heun(), "pndm": PNDM()}


SAMPLERS = ["ddpm", "ddim", "vsampler", "dpmpp_2m", "euler", "heun", "pndm"]
SCHEDULES = {
    "linear_flow": lambda: LinearFlow().schedule(24),
    "variance_exploding": lambda: VarianceExploding().schedule(24),
    "rectified_flow": lambda: build_component("process", {"type": "rectified_flow"}).schedule(24),
    "rectified_flow_shift_3": lambda: build_component("process", {"type": "rectified_flow", "shift": 3.0}).schedule(24),
}


def _sampler(name: str):
    if name in ("ddpm", "ddim", "vsampler"):
        return build_component("sampler", {"type": name})
    return _fast_samplers()[name]


@pytest.mark.parametrize("family", SCHEDULES)
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_samples_every_family(name, family):
    schedule = SCHEDULES[family]()
    assert not torch.allclose(schedule.pow(2).sum(1), torch.ones(schedule.shape[0]))  # not variance preserving
    check_sampler(_sampler(name), schedule)


@pytest.mark.parametrize("family", ["linear_flow", "variance_exploding"])
def test_vsampler_takes_ddims_steps_off_the_circle(family):
    schedule = SCHEDULES[family]()
    denoise = gaussian_denoiser(mean=0.3, std=0.7)
    x_T = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0)) * schedule[0, 1]
    ddim = build_component("sampler", {"type": "ddim"})(denoise, x_T, schedule)
    vsampler = build_component("sampler", {"type": "vsampler"})(denoise, x_T, schedule)
    torch.testing.assert_close(vsampler, ddim, atol=1e-4 * float(schedule[0, 1]), rtol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_ddpm_and_ddim_go_from_pure_noise_at_alpha_zero_in_one_step(name):
    """One step from (0, 1) to (1, 0): the posterior at alpha = 0 ignores x and lands on x0."""
    schedule = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    x0 = torch.full((2, 3), 0.25)
    out = build_component("sampler", {"type": name})(lambda x, a, s: x0, torch.randn(2, 3), schedule,
                                                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x0)


# -- guidance goes through the process's denoiser ------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_guidance_keeps_the_processs_input_preconditioning(scale):
    from tta_core.diffusion import Guidance, guided_denoiser

    process, net, (cond, uncond) = VarianceExploding(), CountingNet(), _conds()
    x = 20.0 * torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(1))
    alpha, sigma = torch.ones(2), torch.full((2,), 20.0)
    x0 = guided_denoiser(process, net, cond, uncond, Guidance(scale=scale))(x, alpha, sigma)
    assert net.batches == ([2] if scale == 1.0 else [4])  # one network call, both halves batched

    c_in, t = 1 / math.sqrt(1 + 20.0**2), torch.full((2,), math.log(20.0) / 4)
    eps_c, eps_u = net(c_in * x, t, cond), net(c_in * x, t, uncond)
    expected = x - 20.0 * (eps_u + scale * (eps_c - eps_u))
    torch.testing.assert_close(x0, expected)
    unscaled = x - 20.0 * (lambda u, c: u + scale * (c - u))(net(x, t, uncond), net(x, t, cond))
    assert not torch.allclose(x0, unscaled, atol=1e-2)  # the network saw c_in x, not x


def test_guidance_interval_is_decided_on_the_samplers_sigma():
    from tta_core.diffusion import Guidance, guided_denoiser

    process, net, (cond, uncond) = VarianceExploding(), CountingNet(), _conds()
    banded = guided_denoiser(process, net, cond, uncond, Guidance(scale=4.0, interval=(1.0, 30.0)))
    full = guided_denoiser(process, net, cond, uncond, Guidance(scale=4.0))
    plain = process.denoiser(net, cond)
    x = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(2))
    for s, expected in ((50.0, plain), (20.0, full), (0.5, plain)):
        level = (torch.ones(2), torch.full((2,), s))
        torch.testing.assert_close(banded(x, *level), expected(x, *level))
    mixed = (torch.ones(2), torch.tensor([20.0, 50.0]))  # decided per item
    out = banded(x, *mixed)
    torch.testing.assert_close(out[0], full(x, *mixed)[0])
    torch.testing.assert_close(out[1], plain(x, *mixed)[1])


# -- initial_noise ------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [{"type": "vp_discrete"}, {"type": "v_diffusion"}, {"type": "rectified_flow"}])
def test_initial_noise_is_the_unit_draw_at_a_unit_level(node):
    """A variance-preserving first row (r0 within float32 rounding of 1) and a flow's (0, 1)
    start from exactly diffusers' prepare_latents draw, as the VP pipelines' parity needs."""
    from tta_core.diffusion import initial_noise

    schedule = build_component("process", node).schedule(10)
    x_T = initial_noise(schedule, (2, 4, 8), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x_T, torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(7)))


def test_initial_noise_scales_to_a_variance_exploding_first_level():
    from tta_core.diffusion import initial_noise

    schedule = VarianceExploding().schedule(10)
    x_T = initial_noise(schedule, (4, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    unit = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x_T.dtype == torch.float64 and torch.equal(x_T, unit * math.hypot(1.0, float(schedule[0, 1])))
    assert 79 < x_T.std().item() < 81.2
    # a level between: the spread of unit-variance data noised to (alpha, sigma)
    half = initial_noise(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), (20000,), generator=torch.Generator().manual_seed(0))
    assert abs(half.std().item() - math.sqrt(0.5)) < 0.01


def test_initial_noise_without_a_generator_and_its_errors():
    from tta_core.diffusion import initial_noise

    x_T = initial_noise(VarianceExploding().schedule(4), (3, 5), device="cpu")
    assert x_T.shape == (3, 5) and x_T.device.type == "cpu" and x_T.abs().max() > 5
    with pytest.raises(ValueError, match="schedule"):
        initial_noise(torch.zeros(3), (2,))
    with pytest.raises(ValueError, match="first level"):
        initial_noise(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), (2,))


# -- rectified_flow -------------------------------------------------------------------------------------


def _flow(**kwargs):
    return build_component("process", {"type": "rectified_flow", **kwargs})


def test_rectified_flow_schedule_and_shift():
    plain, shifted = _flow().schedule(4), _flow(shift=3.0).schedule(4)
    torch.testing.assert_close(plain, torch.tensor([[0.0, 1.0], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0]]))
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(shifted[:, 1], 3 * t / (1 + 2 * t))  # SD3's shift
    torch.testing.assert_close(shifted.sum(1), torch.ones(5))
    assert shifted[2, 1] > plain[2, 1]  # more steps at high noise


def test_rectified_flow_recovers_x0_from_an_exact_velocity_on_any_level():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    process = _flow(time_scale=1000.0)
    seen = []

    def oracle(x, t, cond):
        seen.append((x, t))
        return eps - x0

    # a level of the flow's schedule, and a variance-preserving one with the same SNR as t = 4/7
    for alpha, sigma in ((0.3, 0.7), (0.6, 0.8)):
        a, s = torch.full((2,), alpha), torch.full((2,), sigma)
        x = alpha * x0 + sigma * eps
        torch.testing.assert_close(process.denoiser(oracle, None)(x, a, s), x0)
        t = sigma / (alpha + sigma)
        torch.testing.assert_close(seen[-1][1], torch.full((2,), 1000.0 * t))
        torch.testing.assert_close(seen[-1][0], (1 - t) * x0 + t * eps)  # the point on the line


def test_rectified_flow_training_pairs():
    process = _flow(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    x0 = torch.randn(8192, 2, generator=torch.Generator().manual_seed(0))
    pair = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pair.alpha + pair.sigma, torch.ones(8192))
    torch.testing.assert_close(pair.x_t, pair.alpha[:, None] * x0 + pair.sigma[:, None] * pair.noise)
    torch.testing.assert_close(pair.target, pair.noise - x0)
    torch.testing.assert_close(pair.t, pair.sigma)
    logit = torch.logit(pair.sigma.double())
    assert abs(logit.mean().item() - 0.5) < 0.05 and abs(logit.std().item() - 0.8) < 0.05
    again = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.x_t, pair.x_t)
    uniform = _flow().training_pair(x0, generator=torch.Generator().manual_seed(1)).sigma
    assert abs(uniform.mean().item() - 0.5) < 0.02 and abs(uniform.std().item() - math.sqrt(1 / 12)) < 0.02


def test_rectified_flow_min_snr_weights_the_x0_error():
    process = _flow(snr_gamma=5.0)
    alpha, sigma = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.1, 0.5, 0.9])
    snr = alpha**2 / sigma**2
    # the x0 error is sigma times the velocity error on the line, so min(SNR, 5) * sigma^2
    torch.testing.assert_close(process.loss_weights(alpha, sigma), snr.clamp(max=5.0) * sigma**2)
    net = torch.nn.Linear(2, 2)
    loss = process.loss(lambda x, t, c: net(x), torch.randn(16, 2), None, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("kwargs,match", [
    ({"prediction": "epsilon"}, "x0 cannot be recovered"),
    ({"prediction": "v"}, "velocity or sample"),
    ({"shift": 0.0}, "shift"),
    ({"logit_std": 1.0}, "logit_normal"),
    ({"time_sampling": "logit_normal", "logit_std": 0.0}, "logit_std"),
    ({"snr_gamma": -1.0}, "snr_gamma"),
])
def test_rectified_flow_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _flow(**kwargs)


def test_rectified_flow_settings_are_checked_in_a_recipe(capsys):
    from tta_core.cli import main

    recipe = str(REPO / "recipes" / "quickstart.yaml")
    good = "components.process={type: rectified_flow, time_sampling: logit_normal, shift: 3.0}"
    assert main([recipe, "validate", "--set", good]) == 0
    capsys.readouterr()
    bad = "components.process={type: rectified_flow, time_sampling: lognormal, shift: -1.0}"
    assert main([recipe, "validate", "--set", bad]) == 2
    err = capsys.readouterr().err
    assert "lognormal" in err and "logit_normal" in err and "'components.process.shift': must be greater than 0" in err


# -- slow: the quickstart trained and sampled with each non-variance-preserving process ------------------

VE_PLUGIN = """
    from tta_core.plugin import hookimpl

    @hookimpl
    def tta_register(register):
        register("process", "test_ve", "test_process_families:VarianceExploding")
"""


@pytest.fixture(scope="module")
def quickstart_vae(tmp_path_factory):
    """A synthetic set and the quickstart's VAE stage trained 2 steps: each process then
    trains its LDM stage on a copy of the run."""
    from tta_core.cli import main

    root = tmp_path_factory.mktemp("families")
    assert main(["synth", "sounds", "--out", str(root / "sounds"), "--n", "16", "--seed", "0", "--duration", "1.0"]) == 0
    manifest = ["--set", f"data.train.manifest={root / 'sounds' / 'manifest.jsonl'}"]
    assert main([str(REPO / "recipes" / "quickstart.yaml"), "train", "--stage", "vae", "--max-steps", "2",
                 "--no-progress", "--skip-memory-check", "--run-dir", str(root / "run"), *manifest]) == 0
    return root, manifest


def _train_and_sample(quickstart_vae, tmp_path, process: str) -> None:
    from tta_core.cli import main

    root, manifest = quickstart_vae
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    sets = [*manifest, "--set", f"components.process={process}", "--run-dir", str(run)]
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    assert main([recipe, "train", "--stage", "ldm", "--max-steps", "2", "--no-progress", "--skip-memory-check",
                 *sets]) == 0
    out = tmp_path / "out"
    for sampler in ("ddpm", "ddim", "vsampler"):
        assert main([recipe, "sample", "--text", "a rising chirp", "--sampler", sampler, "--steps", "3",
                     "--guidance", "3", "--duration", "0.64", "--seed", "1", "--out", str(out), "--no-progress",
                     *sets]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["sampler"]["type"] for r in rows] == ["ddpm", "ddim", "vsampler"]
    import soundfile

    for row in rows:
        wave, rate = soundfile.read(out / row["file"])
        assert rate == 16000 and len(wave) == round(0.64 * 16000)
        assert bool(torch.isfinite(torch.from_numpy(wave)).all())


@pytest.mark.slow
def test_quickstart_trains_and_samples_with_rectified_flow(quickstart_vae, tmp_path):
    _train_and_sample(quickstart_vae, tmp_path, "{type: rectified_flow, time_sampling: logit_normal, shift: 3.0}")


@pytest.mark.slow
def test_quickstart_trains_and_samples_with_a_third_party_variance_exploding_process(quickstart_vae, tmp_path,
                                                                                      fake_dists):
    fake_dists("tta-test-ve", "1.0", {"ve": VE_PLUGIN})
    _train_and_sample(quickstart_vae, tmp_path, "{type: test_ve}")
