"""The Mousai family: the 1-D U-Net generator against audio-diffusion-pytorch's reference."""

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
