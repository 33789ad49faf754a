"""Adapters (LoRA, DoRA through peft) on the built-in networks: where they go, that only they
train, that a saved adapter gives the same network back elsewhere, scales, several at once,
merging, and the refusals."""

import copy

import pytest
import torch

from tta_core import adapters as A
from tta_core.errors import UsageError
from tta_core.interfaces import Conditioning
from tta_audioldm.unet import UNet2D
from tta_mousai.unet1d import UNet1D

from test_mousai import TINY as TINY_1D


def unet2d():
    torch.manual_seed(0)
    return UNet2D(in_channels=4, channels=(16, 32), layers_per_block=1, cross_attention_dim=8, norm_groups=8,
                  head_dim=8).eval()


def unet1d():
    torch.manual_seed(0)
    return UNet1D(**TINY_1D).eval()


def inputs(net):
    g = torch.Generator().manual_seed(1)
    if isinstance(net, UNet2D):
        x, width = torch.randn(2, 4, 16, 8, generator=g), 8
    else:
        x, width = torch.randn(2, 4, 32, generator=g), TINY_1D["embedding_features"]
    cond = Conditioning(tokens=torch.randn(2, 3, width, generator=g), mask=torch.ones(2, 3, dtype=torch.bool))
    return x, torch.rand(2, generator=g), cond


def train_adapter(net, steps=3):
    """The adapter's update made non-zero, then a few optimizer steps on the adapter alone."""
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.1)
    params = A.adapter_parameters(net)
    opt = torch.optim.SGD(params, lr=0.5)
    x, t, cond = inputs(net)
    for _ in range(steps):
        loss = net(x, t, cond).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.mark.parametrize("make", [unet2d, unet1d], ids=["unet2d", "unet1d"])
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_an_adapter_on_the_default_targets_is_all_that_trains_and_reaches_every_target(make, kind):
    net = make()
    x, t, cond = inputs(net)
    before = net(x, t, cond).detach()
    base = {n: p.detach().clone() for n, p in net.named_parameters()}
    modules = A.add_adapter(net, A.AdapterConfig(type=kind, rank=2, alpha=2))
    assert modules and all(any(m.endswith(p.lstrip("*")) for p in type(net).adapter_targets) for m in modules)
    assert torch.equal(net(x, t, cond), before)  # a fresh adapter changes nothing
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapter = sum(p.numel() for p in A.adapter_parameters(net))
    assert adapter < 0.1 * sum(base[n].numel() for n in base)
    with torch.no_grad():  # a non-zero update on every layer, so each layer's input gradient shows
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    net(x, t, cond).square().mean().backward()
    reached = {n.split(".lora_A")[0] for n, p in net.named_parameters()
               if ".lora_A." in n and p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == set(modules)  # every adapted layer is on the forward path
    train_adapter(net)
    assert not torch.allclose(net(x, t, cond), before, atol=1e-4)
    for n, p in net.named_parameters():  # the network's own weights did not move
        if not A._is_adapter(n):
            assert torch.equal(p, base[n.replace(".base_layer", "")])


@pytest.mark.parametrize("make", [unet2d, unet1d], ids=["unet2d", "unet1d"])
def test_a_saved_adapter_gives_the_same_network_on_another_copy_scaled_and_merged(make, tmp_path):
    net = train_adapter(_with_adapter(make(), "lora"))
    x, t, cond = inputs(net)
    trained = net(x, t, cond).detach()
    path = A.save_adapter(net, tmp_path / "birds.safetensors")
    found = A.read_adapter(path)
    cfg, state = found.config, found.state
    assert cfg.rank == 2 and cfg.modules and all("lora_" in k for k in state)
    assert path.stat().st_size < 0.2 * sum(p.numel() * 4 for p in make().parameters())

    other = make()
    base = other(x, t, cond).detach()
    name = A.load_adapter(other, path)
    assert name == "birds" and not any(p.requires_grad for n, p in other.named_parameters() if "lora_" in n)
    torch.testing.assert_close(other(x, t, cond), trained, atol=1e-6, rtol=0)
    A.set_adapter_scale(other, name, 0.0)
    torch.testing.assert_close(other(x, t, cond), base, atol=1e-6, rtol=0)
    A.set_adapter_scale(other, name, 0.5)
    half = other(x, t, cond).detach()
    assert (half - base).abs().max() > 1e-4 and (half - trained).abs().max() > 1e-4
    A.merge_adapters(other)
    assert not any("lora_" in k or "base_layer" in k for k in other.state_dict())
    assert set(other.state_dict()) == set(make().state_dict())  # a plain network again
    torch.testing.assert_close(other(x, t, cond), half, atol=1e-5, rtol=0)


def _with_adapter(net, kind):
    A.add_adapter(net, A.AdapterConfig(type=kind, rank=2, alpha=2))
    return net


def test_two_adapters_are_active_at_once_and_each_can_be_turned_down(tmp_path):
    paths = []
    for seed in (1, 2):
        net = _with_adapter(unet2d(), "lora")
        torch.manual_seed(seed)
        with torch.no_grad():
            for n, p in net.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05)
        paths.append(A.save_adapter(net, tmp_path / f"a{seed}.safetensors"))
    single = unet2d()
    A.load_adapter(single, paths[0])
    x, t, cond = inputs(single)
    alone = single(x, t, cond).detach()
    both = unet2d()
    first, second = A.load_adapter(both, paths[0]), A.load_adapter(both, paths[1], scale=0.7)
    assert (first, second) == ("a1", "a2")
    mixed = both(x, t, cond).detach()
    assert (mixed - alone).abs().max() > 1e-4
    A.set_adapter_scale(both, second, 0.0)
    torch.testing.assert_close(both(x, t, cond), alone, atol=1e-6, rtol=0)


def test_a_rebuilt_copy_of_a_network_keeps_its_adapters():
    """ema-pytorch copies a network with deepcopy; a-unet networks copy by rebuilding."""
    net = train_adapter(_with_adapter(unet1d(), "dora"))
    x, t, cond = inputs(net)
    twin = copy.deepcopy(net)
    assert A.adapters_of(twin).keys() == A.adapters_of(net).keys()
    torch.testing.assert_close(twin(x, t, cond), net(x, t, cond), atol=0, rtol=0)


def test_targets_that_match_nothing_and_networks_without_defaults_are_refused_with_the_layer_names(tmp_path):
    with pytest.raises(UsageError, match=r"match no Linear/Conv1d/Conv2d layer of UNet2D.*\*\.to_q"):
        A.add_adapter(unet2d(), A.AdapterConfig(targets=("*.nothing_here",)))
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(UsageError, match="declares no default adapter targets"):
        A.add_adapter(plain, A.AdapterConfig())
    assert A.add_adapter(plain, A.AdapterConfig(targets=("0", "2"))) == ["0", "2"]

    small = _with_adapter(unet2d(), "lora")
    path = A.save_adapter(small, tmp_path / "rank2.safetensors")
    wide = unet2d()
    A.add_adapter(wide, A.AdapterConfig(rank=4, alpha=4), name="rank2")
    with pytest.raises(UsageError, match="does not fit this network"):
        A.load_adapter_state(wide, A.read_adapter(path).state, "rank2")
    with pytest.raises(UsageError, match="does not fit this network"):
        A.load_adapter(unet1d(), path)
    not_adapter = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(not_adapter))
    with pytest.raises(UsageError, match="holds no tta adapter"):
        A.read_adapter(not_adapter)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(UsageError, match="not a safetensors file"):
        A.read_adapter(tmp_path / "junk.safetensors")
    with pytest.raises(UsageError, match="no adapter file"):
        A.read_adapter(tmp_path / "missing.safetensors")


def test_a_stage_adapter_setting_is_read_with_its_keys_checked():
    cfg = A.parse_adapter({"type": "dora", "rank": 4, "targets": "*.to_q"}, "train.ft.adapters")
    assert cfg == A.AdapterConfig(type="dora", rank=4, targets=("*.to_q",))
    assert A.parse_adapter(None, "x") is None
    with pytest.raises(UsageError, match=r"train.ft.adapters: unknown keys rnak; known: alpha, components"):
        A.parse_adapter({"rnak": 4}, "train.ft.adapters")
    with pytest.raises(UsageError, match="lora or dora"):
        A.parse_adapter({"type": "ia3"}, "train.ft.adapters")
