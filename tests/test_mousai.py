"""The Mousai family: the 1-D U-Net generator against audio-diffusion-pytorch's reference."""

import math

import pytest
import torch

from tta_core.interfaces import Conditioning
from tta_core.testing.conformance import check_denoiser
from tta_core.training.latent_diffusion import select

from tta_mousai.unet1d import UNet1D

TINY = dict(in_channels=4, channels=(16, 32), factors=(1, 2), items=(1, 1), attentions=(0, 1),
            cross_attentions=(1, 1), attention_heads=2, attention_features=8, embedding_features=16,
            embedding_max_length=8, modulation_features=32)


def tiny_unet1d():
    torch.manual_seed(0)
    return UNet1D(**TINY)


def _cond(batch=2, length=5):
    tokens = torch.randn(batch, length, 16)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 3:] = False
    return Conditioning(tokens=tokens, mask=mask)


def test_unet1d_conforms_and_takes_lengths_its_factors_do_not_divide():
    net = tiny_unet1d()
    check_denoiser(net, torch.randn(2, 4, 32), _cond())
    with torch.no_grad():
        assert net(torch.randn(2, 4, 33), torch.rand(2), _cond()).shape == (2, 4, 33)
    with pytest.raises(ValueError, match="expects 16-wide token conditioning"):
        net(torch.randn(2, 4, 32), torch.rand(2), Conditioning(tokens=torch.randn(2, 5, 8)))
    with pytest.raises(ValueError, match="items has 1 entries, channels has 2"):
        UNet1D(**{**TINY, "items": (1,)})


def test_unet1d_matches_audio_diffusion_pytorch_and_its_null_is_the_learned_cfg_embedding():
    from audio_diffusion_pytorch import UNetV0

    net = tiny_unet1d().eval()
    ref = UNetV0(dim=1, in_channels=4, channels=[16, 32], factors=[1, 2], items=[1, 1], attentions=[0, 1],
                 cross_attentions=[1, 1], attention_heads=2, attention_features=8, embedding_features=16,
                 embedding_max_length=8, modulation_features=32, use_embedding_cfg=True).eval()
    ref.load_state_dict(net.net.state_dict())  # the same names: reference weights load as they are
    x, t, cond = torch.randn(2, 4, 32), torch.rand(2), _cond()
    # the reference's T5 embedder pads to embedding_max_length; padding carries zeros
    padded = torch.zeros(2, 8, 16)
    padded[:, :5] = cond.tokens * cond.mask[..., None]
    with torch.no_grad():
        assert torch.allclose(net(x, t, cond), ref(x, time=t, embedding=padded), atol=1e-5)
        # the reference's guidance path with every embedding masked: its learned null
        masked = ref(x, time=t, embedding=padded, embedding_mask_proba=1.0)
        assert torch.allclose(net(x, t, net.null(2)), masked, atol=1e-5)
        # and its guided output is what guidance with our null computes
        guided = ref(x, time=t, embedding=padded, embedding_scale=3.0)
        ours = net(x, t, net.null(2)) + 3.0 * (net(x, t, cond) - net(x, t, net.null(2)))
        assert torch.allclose(guided, ours, atol=1e-4)


def test_caption_dropout_to_the_learned_null_trains_it():
    net = tiny_unet1d()
    cond, drop = _cond(), torch.tensor([True, False])
    mixed = select(cond, net.null(2), drop)
    net(torch.randn(2, 4, 32), torch.rand(2), mixed).pow(2).mean().backward()
    grad = net._null_table.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_a_deep_copy_computes_with_its_own_weights():
    import copy

    net = tiny_unet1d().eval()
    twin = copy.deepcopy(net)  # what EMA does
    x, t, cond = torch.randn(2, 4, 32), torch.rand(2), _cond()
    with torch.no_grad():
        assert torch.equal(twin(x, t, cond), net(x, t, cond))
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin(x, t, cond), net(x, t, cond))


TINY_AE = dict(channels=(16, 32, 32), factors=(1, 2, 2), items=(1, 1, 1), num_filters=32, window_length=16, stride=16,
               inject_depth=1, encoder_channels=32, encoder_multipliers=(1, 1), encoder_factors=(2,),
               encoder_num_blocks=(1,), stft_num_fft=63, stft_hop_length=16, latent_channels=8, decode_steps=3)


def tiny_diffae():
    from tta_mousai.diffae import DiffAE

    torch.manual_seed(0)
    return DiffAE(**TINY_AE).eval()


def _reference_diffae(ours):
    from audio_diffusion_pytorch import DiffusionAE, LTPlugin, UNetV0, VDiffusion, VSampler
    from audio_encoders_pytorch import ME1d, TanhBottleneck

    ref = DiffusionAE(
        net_t=LTPlugin(UNetV0, num_filters=32, window_length=16, stride=16), dim=1, in_channels=1,
        channels=[16, 32, 32], factors=[1, 2, 2], items=[1, 1, 1], inject_depth=1,
        encoder=ME1d(in_channels=1, channels=32, multipliers=[1, 1], factors=[2], num_blocks=[1], stft_num_fft=63,
                     stft_hop_length=16, out_channels=8, bottleneck=TanhBottleneck()),
        diffusion_t=VDiffusion, sampler_t=VSampler).eval()
    state = ours.state_dict()  # the reference's own names; its diffusion/sampler hold the same net
    ref.load_state_dict({**state, **{f"{p}.{k[4:]}": v for p in ("diffusion.net", "sampler.net")
                                     for k, v in state.items() if k.startswith("net.")}})
    return ref


def test_diffae_compresses_by_its_factor_and_conforms():
    from tta_core.testing.conformance import check_autoencoder

    ae = tiny_diffae()
    x = torch.randn(2, 1, 2048)
    check_autoencoder(ae, x, steps=2)
    z = ae.encode(x)
    assert z.shape == (2, 8, 64) and ae.latent_factor == 32  # 32 samples -> 1 frame of 8 channels
    assert x[0].numel() / z[0].numel() == 4 and z.abs().max() <= 1  # tanh bottleneck
    assert ae.latent_shape(2000) == (8, 64)  # lengths round up to what the decoder divides
    with pytest.raises(ValueError, match="inject_depth"):
        type(ae)(**{**TINY_AE, "inject_depth": 2})
    import copy

    twin = copy.deepcopy(ae)  # as EMA copies it: computes with its own weights
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin.decoder_net(z)(x, torch.rand(2)), ae.decoder_net(z)(x, torch.rand(2)))


def test_diffae_decodes_with_any_sampler_and_matches_audio_diffusion_pytorch():
    from tta_core.diffusion import DDIM, VSampler

    ae = tiny_diffae()
    ref = _reference_diffae(ae)
    x = torch.randn(2, 1, 2048)
    with torch.no_grad():
        z = ae.encode(x)
        assert torch.allclose(z, ref.encode(x), atol=1e-6)
        ours = ae.decode(z, steps=3, generator=torch.Generator().manual_seed(0))
        theirs = ref.decode(z, num_steps=3, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(ours, theirs, atol=1e-4)
        # the reference's training loss on the same pair is the v_diffusion loss of our decoder net
        from tta_core.diffusion import VDiffusion

        torch.manual_seed(1)
        ref_loss = ref(x)
        torch.manual_seed(1)
        sigmas = torch.rand(2)
        noise = torch.randn_like(x)
        a, s = torch.cos(sigmas * math.pi / 2)[:, None, None], torch.sin(sigmas * math.pi / 2)[:, None, None]
        v = ae.decoder_net(z)(a * x + s * noise, sigmas)
        assert torch.allclose(ref_loss, torch.nn.functional.mse_loss(v, a * noise - s * x), atol=1e-5)
        ddim = ae.decode(z, steps=3, sampler=DDIM(), generator=torch.Generator().manual_seed(0))
    assert ddim.shape == ours.shape == (2, 1, 2048) and torch.isfinite(ddim).all()
    assert not torch.allclose(ddim, ours)
    again = ae.decode(z, steps=3, sampler=VSampler(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, ours)


@pytest.mark.slow
def test_tiny_birds_recipe_trains_resumes_and_samples_with_the_learned_null(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    import soundfile

    from tta_core.checkpoint import latest_checkpoint
    from tta_core.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    calls = {"null": 0}
    original = UNet1D.null

    def spy(self, batch):
        calls["null"] += 1
        return original(self, batch)

    monkeypatch.setattr(UNet1D, "null", spy)
    assert main(["synth", "birds", "--out", str(tmp_path / "birds"), "--n", "16", "--seed", "0"]) == 0
    sets = [f"data.train.manifest={tmp_path / 'birds/manifest.jsonl'}", "train.diffae.batch_size=4",
            "train.diffgen.batch_size=4", "components.ae.decode_steps=2"]
    common = [x for s in sets for x in ("--set", s)] + ["--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(["recipes/diffae_birds_tiny.yaml", "train", "--max-steps", "1", *common]) == 0
    assert calls["null"] > 0  # caption dropout went through the generator's learned null
    assert main(["recipes/diffae_birds_tiny.yaml", "train", "--max-steps", "2", *common]) == 0  # resumes
    for stage, component in (("diffae", "ae"), ("diffgen", "unet")):
        ckpt = latest_checkpoint(tmp_path / "run" / stage / "checkpoints")
        assert ckpt.step == 2 and ckpt.has_weights(component) and ckpt.has_weights(f"{component}.ema")
    used = calls["null"]
    out = tmp_path / "out"
    assert main(["recipes/diffae_birds_tiny.yaml", "sample", "--text", "a silver warbler trilling", "--steps", "2",
                 "--out", str(out), *common]) == 0
    assert calls["null"] > used  # guidance's unconditional half
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    wave, rate = soundfile.read(out / row["file"])
    assert rate == 16000 and len(wave) == 16384 and row["weights"]["ae"].endswith("ae.ema.safetensors")


@pytest.mark.slow
def test_after_a_short_tiny_training_two_species_prompts_differ_in_pitch_range(tmp_path, monkeypatch):
    """The tiny birds recipe as shipped (300 DiffAE steps, 400 generator steps) on 500
    synthetic clips: the silver warbler sings at 5-6.5 kHz, the dusk dove hoots at 450-750 Hz.
    Four generated calls of each: the share of spectral energy above 3 kHz must separate them."""
    import json
    from pathlib import Path

    import numpy as np
    import soundfile

    from tta_core.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["synth", "birds", "--out", str(tmp_path / "birds"), "--n", "500", "--seed", "0"]) == 0
    common = ["--set", f"data.train.manifest={tmp_path / 'birds/manifest.jsonl'}", "--run-dir", str(tmp_path / "run"),
              "--no-progress"]
    assert main(["recipes/diffae_birds_tiny.yaml", "train", *common]) == 0
    out = tmp_path / "out"
    prompts = {"silver_warbler": "a high thin trill of the silver warbler", "dusk_dove": "soft low hoots of the dusk dove"}
    assert main(["recipes/diffae_birds_tiny.yaml", "sample", *[x for p in prompts.values() for x in ("--text", p)],
                 "--n", "4", "--seed", "0", "--out", str(out), *common]) == 0

    def high_share(path):
        wave, rate = soundfile.read(path)
        power = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
        return power[np.fft.rfftfreq(len(wave), 1 / rate) > 3000].sum() / power.sum()

    share = {label: [] for label in prompts}
    for row in (json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()):
        label = next(k for k, p in prompts.items() if p == row["prompt"])
        share[label].append(high_share(out / row["file"]))
    assert len(share["silver_warbler"]) == len(share["dusk_dove"]) == 4
    # measured: warbler 0.50-0.53, dove 0.17-0.21 (the real calls: about 1 and 0)
    assert min(share["silver_warbler"]) > max(share["dusk_dove"]) + 0.1, share
    assert np.mean(share["silver_warbler"]) > 1.8 * np.mean(share["dusk_dove"]), share
