"""Processes and samplers: every sampler with every process, schedules, training pairs."""

import math

import pytest
import torch

from tta_core.diffusion import DDIM, DDPM, RectifiedFlow, VDiffusion, VPDiscrete, VSampler
from tta_core.interfaces import Process, Sampler
from tta_core.testing.conformance import check_sampler, gaussian_denoiser

AUDIOLDM = dict(betas="scaled_linear", beta_start=0.0015, beta_end=0.0195, steps_offset=1)

PROCESSES = {
    "vp_eps_audioldm": lambda: VPDiscrete(**AUDIOLDM, set_alpha_to_one=False),
    "vp_v_trailing": lambda: VPDiscrete(betas="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        prediction="v", spacing="trailing"),
    "vp_x0_cosine": lambda: VPDiscrete(betas="cosine", prediction="sample", spacing="linspace"),
    "vp_v_zero_snr": lambda: VPDiscrete(betas="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                                        prediction="v", spacing="trailing", zero_terminal_snr=True),
    "v_diffusion": lambda: VDiffusion(),
    "rectified_flow_shift": lambda: RectifiedFlow(shift=3.0, time_scale=1000.0),
    "rectified_flow_x0": lambda: RectifiedFlow(prediction="sample"),
}
SAMPLERS = {"ddpm": DDPM(), "ddim": DDIM(), "ddim_eta": DDIM(eta=1.0), "vsampler": VSampler()}


def exact_net(process, mean=0.5, std=0.5):
    """The exact denoiser of N(mean, std^2) data written as a *network* in the process's
    parameterisation: it reads the level from its time input t, as a trained net would."""
    def net(x, t, cond=None):
        if isinstance(process, VPDiscrete):
            a, s = process.alpha[t.long()], process.sigma[t.long()]
        elif isinstance(process, RectifiedFlow):
            s = t / process.time_scale
            a = 1 - s
        else:
            a, s = torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
        a, s = a.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
        x0 = mean + a * std**2 * (x - a * mean) / (a**2 * std**2 + s**2)
        if process.prediction == "epsilon":
            return (x - a * x0) / s
        if process.prediction == "v":
            return a * (x - a * x0) / s - s * x0
        if process.prediction == "velocity":  # the flow's eps - x0
            return (x - a * x0) / s - x0
        return x0
    return net


@pytest.mark.parametrize("process_name", list(PROCESSES))
@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
def test_every_sampler_samples_every_process(sampler_name, process_name):
    process, sampler = PROCESSES[process_name](), SAMPLERS[sampler_name]
    assert isinstance(process, Process) and isinstance(sampler, Sampler)
    schedule = process.schedule(100)
    check_sampler(sampler, schedule)  # the contract, with an exact (alpha, sigma) denoiser
    # The same denoiser as a network that reads its level from t: the process's net_time
    # and parameterisation must hand it exactly the levels the sampler is at.
    x_T = torch.randn(64, 4, 16, generator=torch.Generator().manual_seed(0)) * schedule[0, 1] + schedule[0, 0] * 0.5
    via_net = sampler(process.denoiser(exact_net(process), cond=None), x_T, schedule,
                      generator=torch.Generator().manual_seed(1))
    direct = sampler(gaussian_denoiser(0.5, 0.5), x_T, schedule, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(via_net, direct, atol=1e-4)
    # 100 steps of a first-order sampler land near the data's moments (DDPM's fixed_small
    # variance and DDIM's discretisation both shrink the spread slightly, DDPM's most from a
    # zero-terminal-SNR start: 0.457 at 100 steps, 0.497 at 1000)
    assert abs(via_net.mean().item() - 0.5) < 0.02 and abs(via_net.std().item() - 0.5) < 0.05


def test_vp_schedule_rows_are_the_visited_timesteps_and_map_back_exactly():
    process = VPDiscrete(**AUDIOLDM, set_alpha_to_one=False)
    ts = process.timesteps(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50  # leading spacing + steps_offset 1
    schedule = process.schedule(50)
    assert schedule.shape == (51, 2) and schedule.dtype == torch.float32
    assert torch.equal(process.net_time(schedule[:-1, 0], schedule[:-1, 1]), ts.float())
    ab0 = process.alphas_cumprod[0]
    assert torch.allclose(schedule[-1], torch.stack([ab0.sqrt(), (1 - ab0).sqrt()]))
    assert torch.equal(VPDiscrete(**AUDIOLDM).schedule(50)[-1], torch.tensor([1.0, 0.0]))
    assert (schedule[:, 0] ** 2 + schedule[:, 1] ** 2 - 1).abs().max() < 1e-6
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        process.schedule(1001)


def test_spacings_match_diffusers_timesteps():
    from diffusers import DDIMScheduler

    for spacing in ("leading", "linspace", "trailing"):
        for steps in (10, 30, 200):
            ref = DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1 if spacing == "leading" else 0,
                                timestep_spacing=spacing)
            ref.set_timesteps(steps)
            ours = VPDiscrete(betas="scaled_linear", spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
            assert torch.equal(ours.timesteps(steps), ref.timesteps), (spacing, steps)
            assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod)


def test_zero_terminal_snr_matches_diffusers_rescale_and_ends_in_pure_noise():
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                        rescale_betas_zero_snr=True, timestep_spacing="trailing")
    ours = VPDiscrete(betas="scaled_linear", beta_start=0.0015, beta_end=0.0195, prediction="v",
                      spacing="trailing", zero_terminal_snr=True)
    plain = VPDiscrete(betas="scaled_linear", beta_start=0.0015, beta_end=0.0195, prediction="v")
    torch.testing.assert_close(ours.alphas_cumprod[:-1], ref.alphas_cumprod[:-1], rtol=1e-5, atol=1e-7)
    assert ref.alphas_cumprod[-1] == 0 and 0 < ours.alphas_cumprod[-1] < 1e-8  # not 0: finite log-SNR
    assert plain.alpha[-1] > 0.01  # the usual schedule keeps 1.2% of the signal at T-1
    log_snr = 2 * (ours.alpha.log() - ours.sigma.log())
    assert torch.isfinite(log_snr).all() and (log_snr[1:] < log_snr[:-1]).all()
    # every level maps back to its own timestep, the last (the sampler's start) included
    schedule = ours.schedule(25)
    assert torch.equal(ours.net_time(schedule[:-1, 0], schedule[:-1, 1]), ours.timesteps(25).float())
    assert ours.timesteps(25)[0] == 999
    # training at T-1 sees what sampling starts from: noise with no trace of the signal
    x0 = torch.full((4, 8), 15.0)  # a loud latent peak
    pair = ours.training_pair(x0, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 999)
    leak = (ours.alpha[t][:, None] * x0).abs().max()
    assert leak < 1e-3 < (plain.alpha[t][:, None] * x0).abs().min()
    assert pair.x_t.shape == x0.shape
    with pytest.raises(ValueError, match="spacing"):
        VPDiscrete(spacing="final", zero_terminal_snr=True)


def test_cosine_betas_match_diffusers_squaredcos():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(VPDiscrete(betas="cosine").alphas_cumprod, ref.alphas_cumprod)


def test_v_diffusion_schedule_and_time():
    process = VDiffusion()
    schedule = process.schedule(4)
    assert torch.allclose(schedule[:, 1], torch.sin(torch.tensor([1, 0.75, 0.5, 0.25, 0]) * math.pi / 2))
    t = process.net_time(schedule[:, 0], schedule[:, 1])
    assert torch.allclose(t, torch.tensor([1, 0.75, 0.5, 0.25, 0.0]), atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_training_pairs_match_diffusers_add_noise_and_velocity(prediction):
    from diffusers import DDPMScheduler

    process = VPDiscrete(**AUDIOLDM, prediction=prediction)
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)
    x0 = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    pair = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    t = pair.t.long()
    assert torch.allclose(pair.x_t, ref.add_noise(x0, pair.noise, t), atol=1e-6)
    expected = {"epsilon": pair.noise, "v": ref.get_velocity(x0, pair.noise, t), "sample": x0}[prediction]
    assert torch.allclose(pair.target, expected, atol=1e-6)
    # the parameterisation inverts: a net that outputs the target recovers x0 exactly
    x0_hat = process.to_x0(pair.target, pair.x_t, pair.alpha, pair.sigma)
    assert torch.allclose(x0_hat, x0, atol=1e-3 if prediction == "epsilon" else 1e-5)
    # the same generator seed, the same pair; another seed, another
    again = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.x_t, pair.x_t)
    assert not torch.equal(process.training_pair(x0, generator=torch.Generator().manual_seed(2)).x_t, pair.x_t)


def test_loss_is_zero_for_the_exact_target_and_positive_otherwise():
    process = VDiffusion()
    x0 = torch.randn(4, 2, 16)

    def net(x_t, t, cond):  # knows x0: outputs the true v = alpha * eps - sigma * x0
        a, s = process.alpha_sigma(t)
        a, s = a.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
        return a * ((x_t - a * x0) / s) - s * x0

    assert process.loss(net, x0, None, generator=torch.Generator().manual_seed(0)) < 1e-8
    assert process.loss(lambda x, t, c: torch.zeros_like(x), x0, None) > 0.1


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_loss_matches_diffusers_training_scripts(prediction):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    process = VPDiscrete(**AUDIOLDM, prediction=prediction, snr_gamma=5.0)
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                        prediction_type="v_prediction" if prediction == "v" else "epsilon")
    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    net = lambda x, t, c: 0.5 * x  # noqa: E731 - any network will do
    loss = process.loss(net, x0, None, generator=torch.Generator().manual_seed(1))
    # what diffusers' train_text_to_image.py computes with --snr_gamma 5 on the same pair
    pair = process.training_pair(x0, generator=torch.Generator().manual_seed(1))
    t = pair.t.long()
    snr = compute_snr(ref, t)
    weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    weights = weights / snr if prediction == "epsilon" else weights / (snr + 1)
    per_item = torch.nn.functional.mse_loss(net(pair.x_t, pair.t, None), pair.target, reduction="none")
    expected = (per_item.mean(dim=(1, 2, 3)) * weights).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    # the weighting changes the loss: high-SNR levels count less
    plain = VPDiscrete(**AUDIOLDM, prediction=prediction).loss(net, x0, None, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(loss, plain, rtol=1e-3)
    with pytest.raises(ValueError, match="snr_gamma must be positive"):
        VPDiscrete(snr_gamma=0)
