"""Memory knobs: gradient checkpointing of the networks, the adafactor optimizer, and the
frozen autoencoder kept off the accelerator while a stage trains from cached latents."""

import json
from pathlib import Path

import pytest
import torch

from tta_core.checkpoint import latest_checkpoint
from tta_core.cli import main
from tta_core.interfaces import Conditioning
from tta_core.memory import measured_bytes
from test_train import toy  # noqa: F401  (the toy recipe of the trainer's tests)

REPO = Path(__file__).resolve().parents[1]


# -- gradient checkpointing ----------------------------------------------------------------------


def _unet2d(ckpt: bool, width: int):
    from tta_audioldm.unet import UNet2D

    return UNet2D(in_channels=4, channels=(width, 2 * width), attention_levels=(False, True), layers_per_block=1,
                  cross_attention_dim=16, head_dim=8, norm_groups=8, gradient_checkpointing=ckpt)


def _unet2d_step(net, batch: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 16, 8, generator=g)
    cond = Conditioning(tokens=torch.randn(batch, 5, 16, generator=g), mask=torch.ones(batch, 5, dtype=torch.bool))
    return net(x, torch.full((batch,), 10.0), cond).square().mean()


def _kl_vae(ckpt: bool, width: int):
    from tta_audioldm.vae import KLVAE

    return KLVAE(latent_channels=4, channels=(width, 2 * width), layers_per_block=1, norm_groups=8,
                 gradient_checkpointing=ckpt)


def _kl_vae_step(net, batch: int):
    mel = torch.randn(batch, 1, 32, 64, generator=torch.Generator().manual_seed(1))
    return (net.decode(net.encode(mel)) - mel).abs().mean()


def _unet1d(ckpt: bool, width: int):
    from tta_mousai.unet1d import UNet1D

    return UNet1D(in_channels=4, channels=(width, 2 * width), factors=(1, 2), items=(1, 2), attentions=(0, 1),
                  cross_attentions=(0, 1), attention_heads=2, attention_features=8, embedding_features=16,
                  embedding_max_length=4, resnet_groups=8, modulation_features=16, gradient_checkpointing=ckpt)


def _unet1d_step(net, batch: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 256, generator=g)
    cond = Conditioning(tokens=torch.randn(batch, 4, 16, generator=g), mask=torch.ones(batch, 4, dtype=torch.bool))
    return net(x, torch.full((batch,), 0.5), cond).square().mean()


def _t5(ckpt: bool, width: int):
    from tta_audioldm.t5 import T5Conditioner

    return T5Conditioner(config={"d_model": width, "num_layers": 3, "num_heads": 2, "d_ff": 2 * width},
                         gradient_checkpointing=ckpt)


def _clip(ckpt: bool, width: int):
    from tta_audioldm.clip_text import CLIPTextConditioner

    return CLIPTextConditioner(config={"hidden_size": width, "num_hidden_layers": 3, "num_attention_heads": 2,
                                       "intermediate_size": 2 * width, "tokenizer": "bytes"},
                               gradient_checkpointing=ckpt)


def _text_step(net, batch: int):
    texts = [f"a dog barks {i} times in a large hall, then a door closes" for i in range(batch)]
    return net.encode_text(texts).tokens.square().mean()


KNOBS = {"unet2d": (_unet2d, _unet2d_step), "kl_vae": (_kl_vae, _kl_vae_step), "unet1d": (_unet1d, _unet1d_step),
         "t5": (_t5, _text_step), "clip": (_clip, _text_step)}


def _pair(kind: str, width: int):
    """The same network (same weights) without and with gradient checkpointing, training."""
    build, step = KNOBS[kind]
    torch.manual_seed(0)
    plain = build(False, width)
    torch.manual_seed(0)
    ckpt = build(True, width)
    ckpt.load_state_dict(plain.state_dict())
    for net in (plain, ckpt):
        net.train().requires_grad_(True)
    return plain, ckpt, step


@pytest.mark.parametrize("kind", sorted(KNOBS))
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(kind):
    plain, ckpt, step = _pair(kind, width=16)
    results = []
    for net in (plain, ckpt):
        loss = step(net, batch=2)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


@pytest.mark.parametrize("kind", sorted(KNOBS))
def test_gradient_checkpointing_lowers_the_peak_memory_of_a_training_step(kind):
    plain, ckpt, step = _pair(kind, width=16)

    def train_step(net):
        step(net, batch=2).backward()

    peaks = {}
    for name, net in (("off", plain), ("on", ckpt)):
        peaks[name] = measured_bytes(train_step, net)
    assert peaks["on"] < 0.9 * peaks["off"], peaks


def test_gradient_checkpointing_is_off_in_eval_mode_and_without_gradients():
    # sampling and cache filling pay nothing for the knob: the same peak as without it
    plain, ckpt, step = _pair("unet1d", width=32)
    with torch.no_grad():
        peaks = [measured_bytes(step, net.eval(), 4) for net in (plain, ckpt)]
    assert peaks[0] == peaks[1]


def test_the_gradient_checkpointing_knob_is_a_recipe_setting(capsys):
    quickstart = str(REPO / "recipes" / "quickstart.yaml")
    on = [x for c in ("unet", "vae", "text") for x in ("--set", f"components.{c}.gradient_checkpointing=true")]
    assert main([quickstart, "validate", *on]) == 0
    assert main([str(REPO / "recipes" / "diffae_birds.yaml"), "validate",
                 "--set", "components.unet.gradient_checkpointing=true"]) == 0
    capsys.readouterr()
    assert main([quickstart, "validate", "--set", "components.unet.gradient_checkpointing=sometimes"]) == 2
    assert "gradient_checkpointing" in capsys.readouterr().err


def test_a_deep_copy_of_a_checkpointed_unet1d_keeps_the_knob_and_its_own_weights():
    import copy

    _, ckpt, step = _pair("unet1d", width=16)
    twin = copy.deepcopy(ckpt)  # what ema-pytorch does
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    assert twin._args["gradient_checkpointing"] is True
    assert not torch.allclose(step(twin, 2), step(ckpt, 2))


# -- adafactor -----------------------------------------------------------------------------------


def _state_bytes(run_dir: Path) -> int:
    tensors = latest_checkpoint(run_dir / "fit/checkpoints").tensors()
    state = tensors["optimizers"]["main"]["state"]
    return sum(v.numel() * v.element_size() for per_param in state.values() for v in per_param.values()
               if isinstance(v, torch.Tensor))


def test_adafactor_trains_a_stage_with_less_optimizer_state_than_adamw(toy, tmp_path):
    runs = {}
    for kind in ("adafactor", "adamw"):
        run = tmp_path / kind
        assert main([str(toy), "train", "--run-dir", str(run), "--no-progress", "--max-steps", "3",
                     "--set", f"train.fit.optimizer.type={kind}"]) == 0
        runs[kind] = run
    losses = [json.loads(line)["main"] for line in (runs["adafactor"] / "fit/logs/metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] != losses[0]
    weights = latest_checkpoint(runs["adafactor"] / "fit/checkpoints").weights("net")
    start = latest_checkpoint(runs["adamw"] / "fit/checkpoints").weights("net")
    assert any(not torch.equal(weights[k], start[k]) for k in weights)  # it moved the weights
    assert 0 < _state_bytes(runs["adafactor"]) < 0.75 * _state_bytes(runs["adamw"])


def test_adafactor_keeps_factored_second_moments_only():
    from tta_core.training.engine import make_optimizer
    from tta_core.training.stage import OptimizerConfig

    weight = torch.nn.Parameter(torch.randn(64, 32))
    opt = make_optimizer(OptimizerConfig(type="adafactor", lr=1e-2), [weight])
    weight.grad = torch.randn_like(weight)
    opt.step()
    shapes = sorted(tuple(v.shape) for v in opt.state[weight].values() if isinstance(v, torch.Tensor) and v.dim())
    assert shapes == [(32,), (64,)]  # a column and a row statistic, no first moment


# -- the frozen autoencoder off the accelerator ----------------------------------------------------


def test_the_frozen_autoencoder_waits_on_the_cpu_only_when_an_accelerator_trains_from_cached_latents():
    from tta_core.training.latent_diffusion import frozen_autoencoder_device

    assert frozen_autoencoder_device("cuda", latents_cached=True) == torch.device("cpu")
    assert frozen_autoencoder_device(torch.device("cuda", 1), latents_cached=True) == torch.device("cpu")
    assert frozen_autoencoder_device("cuda:1", latents_cached=False) == torch.device("cuda", 1)
    assert frozen_autoencoder_device("cpu", latents_cached=True) == torch.device("cpu")


def test_a_stage_on_an_accelerator_parks_the_autoencoder_after_filling_the_latent_cache(monkeypatch, tmp_path):
    """train_dataset on a stage whose device is "cuda" (no GPU needed: the cache is faked):
    the autoencoder is sent to the CPU once the cache is filled."""
    from types import SimpleNamespace

    from tta_core.training import caching
    from tta_core.training.latent_diffusion import LatentDiffusion

    ae = torch.nn.Linear(2, 2)
    moves = []
    original_to = ae.to

    def to(device, *args, **kwargs):
        moves.append(str(device))
        return original_to("cpu")  # the tensors stay put; where they were sent is what is checked

    monkeypatch.setattr(ae, "to", to)
    ae.domain, ae.latent_shape = "mel", lambda n: (4, n // 4, 16)
    monkeypatch.setattr(caching, "build_caches", lambda *a, **k: {"latents": object(), "texts": None, "stride": 1})
    monkeypatch.setattr(caching, "CachedLatentDataset", lambda *a, **k: "cached")
    monkeypatch.setattr("tta_core.training.datasets.items_for", lambda ctx: [])
    ctx = SimpleNamespace(device=torch.device("cuda"), unwrap=lambda name: ae, trains=("unet",),
                          roles={"autoencoder": "vae", "conditioner": "text"}, audio=SimpleNamespace(num_frames=64),
                          stage=SimpleNamespace(seed=0))
    objective = LatentDiffusion()
    objective.train_text = True
    assert objective.train_dataset(ctx) == "cached"
    assert moves == ["cpu"]
