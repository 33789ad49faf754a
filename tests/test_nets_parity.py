"""tta's own U-Net and autoencoder (tta_audioldm.nets) against diffusers' classes on identical
weights and inputs: the same parameter names, the same weights from the same seed, the same
outputs and gradients; a configuration they do not cover is diffusers' class."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tta_audioldm import nets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
B = 2

QUICKSTART = dict(in_channels=16, out_channels=16, block_out_channels=[32, 64, 128], layers_per_block=1,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                  cross_attention_dim=128, attention_head_dim=[1, 2, 4], norm_num_groups=16,
                  class_embed_type="simple_projection", projection_class_embeddings_input_dim=128)
AUDIOLDM = dict(in_channels=8, out_channels=8, block_out_channels=[32, 64, 96, 160], layers_per_block=2,
                down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
                up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"], cross_attention_dim=[32, 64, 96, 160],
                attention_head_dim=[1, 2, 3, 5], resnet_time_scale_shift="scale_shift",
                class_embed_type="simple_projection", projection_class_embeddings_input_dim=32,
                class_embeddings_concat=True)
SELF_ATTENTION = dict(in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=2,
                      down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"],
                      up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"], mid_block_type="UNetMidBlock2D",
                      attention_head_dim=[8, 16], cross_attention_dim=64, class_embed_type="projection",
                      projection_class_embeddings_input_dim=12, norm_num_groups=8)
LINEAR = dict(QUICKSTART, use_linear_projection=True, transformer_layers_per_block=[1, 2, 1],
              down_block_types=["CrossAttnDownBlock2D"] * 3, up_block_types=["CrossAttnUpBlock2D"] * 3)
VAE = dict(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=[32, 64, 128], layers_per_block=2,
           norm_num_groups=16, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
VAE_PLAIN = dict(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=[32, 64], layers_per_block=1,
                 norm_num_groups=16, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, mid_block_add_attention=False, use_quant_conv=False)


def _inputs(cfg: dict, size: tuple[int, int], tokens: bool, mask: bool = False) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, cfg["in_channels"], *size, generator=g)
    kw = {"timestep": torch.tensor([10.0, 700.0]), "encoder_hidden_states": None}
    if tokens:
        kw["encoder_hidden_states"] = torch.randn(B, 7, 128, generator=g)
    if mask:
        kw["encoder_attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    if cfg.get("class_embed_type"):
        kw["class_labels"] = torch.randn(B, cfg["projection_class_embeddings_input_dim"], generator=g)
    return x, kw


def _pair(reference_cls, own_cls, cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    ref = reference_cls(**cfg)
    with torch.no_grad():  # weights away from their initial zeros, so every path carries signal
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    own = own_cls(**cfg)
    own.load_state_dict(ref.state_dict())
    return ref, own


def _assert_same_gradients(ref: torch.nn.Module, own: torch.nn.Module) -> None:
    """Every parameter's gradient the same, to 1e-4 of the largest (an attention key's bias has
    none in exact arithmetic, so its few 1e-8 of rounding are not compared to themselves)."""
    scale = max(float(p.grad.abs().max()) for p in ref.parameters())
    for (name, a), b in zip(ref.named_parameters(), own.parameters()):
        assert float((a.grad - b.grad).abs().max()) <= 1e-4 * scale, name


CASES = [
    ("quickstart, token mask", QUICKSTART, (16, 8), True, True),
    ("AudioLDM 1, no tokens, scale-shift, odd latent length", AUDIOLDM, (20, 16), False, False),
    ("self-attention blocks", SELF_ATTENTION, (8, 8), False, False),
    ("linear projections, two transformer layers", LINEAR, (12, 8), True, False),
]


@pytest.mark.parametrize("name, cfg, size, tokens, mask", CASES, ids=[c[0] for c in CASES])
def test_unet_computes_what_diffusers_computes(name, cfg, size, tokens, mask):
    ref, own = _pair(diffusers.UNet2DConditionModel, nets.UNet2DConditionModel, cfg)
    assert list(ref.state_dict()) == list(own.state_dict())
    x, kw = _inputs(cfg, size, tokens, mask)
    with torch.no_grad():
        want, got = ref.eval()(x, **kw).sample, own.eval()(x, **kw).sample
    assert got.shape == want.shape == x.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    if mask:  # the masked tokens do not reach the output; the others do
        masked, kept = (dict(kw, encoder_hidden_states=kw["encoder_hidden_states"].clone()) for _ in range(2))
        masked["encoder_hidden_states"][1, 4:] = 100.0
        kept["encoder_hidden_states"][1, :4] = 100.0
        with torch.no_grad():
            assert torch.allclose(own(x, **masked).sample[1], got[1], atol=1e-5)
            assert not torch.allclose(own(x, **kept).sample[1], got[1], atol=1e-3)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_unet_trains_as_diffusers_trains(checkpointing):
    """The same loss and gradients, with gradient checkpointing too (the CPU training path
    of short attention takes the math kernel in both)."""
    ref, own = _pair(diffusers.UNet2DConditionModel, nets.UNet2DConditionModel, QUICKSTART)
    from tta_audioldm.unet import _attention_processor

    ref.set_attn_processor(_attention_processor())
    if checkpointing:
        ref.enable_gradient_checkpointing()
        own.enable_gradient_checkpointing()
    x, kw = _inputs(QUICKSTART, (16, 8), tokens=True, mask=True)
    for net in (ref, own):
        net.train()
        (net(x, **kw).sample ** 2).mean().backward()
    _assert_same_gradients(ref, own)


@pytest.mark.parametrize("cfg", [QUICKSTART, AUDIOLDM, SELF_ATTENTION, LINEAR, VAE], ids=["quickstart", "audioldm",
                                                                                         "self-attention", "linear",
                                                                                         "vae"])
def test_a_seed_draws_the_same_weights_as_diffusers(cfg):
    """Training from scratch starts where it started with diffusers' classes."""
    own_cls, ref_cls = (nets.AutoencoderKL, diffusers.AutoencoderKL) if "latent_channels" in cfg else \
        (nets.UNet2DConditionModel, diffusers.UNet2DConditionModel)
    torch.manual_seed(7)
    want = ref_cls(**cfg).state_dict()
    torch.manual_seed(7)
    got = own_cls(**cfg).state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("cfg", [VAE, VAE_PLAIN], ids=["mid-attention", "plain"])
def test_autoencoder_computes_what_diffusers_computes(cfg):
    ref, own = _pair(diffusers.AutoencoderKL, nets.AutoencoderKL, cfg)
    assert list(ref.state_dict()) == list(own.state_dict())
    x = torch.randn(B, 1, 32, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = ref.eval().encode(x).latent_dist, own.eval().encode(x).latent_dist
        assert torch.allclose(got.mean, want.mean, atol=1e-5) and torch.allclose(got.std, want.std, atol=1e-5)
        assert torch.allclose(got.kl(), want.kl(), rtol=1e-5)
        a = want.sample(torch.Generator().manual_seed(3))
        assert torch.allclose(got.sample(torch.Generator().manual_seed(3)), a, atol=1e-5)
        assert torch.allclose(own.decode(a).sample, ref.decode(a).sample, atol=1e-5)


def test_autoencoder_trains_as_diffusers_trains_with_checkpointing():
    ref, own = _pair(diffusers.AutoencoderKL, nets.AutoencoderKL, VAE)
    for net in (ref, own):
        net.enable_gradient_checkpointing()
        net.train()
    x = torch.randn(B, 1, 32, 16, generator=torch.Generator().manual_seed(2))
    for net in (ref, own):
        dist = net.encode(x).latent_dist
        (net.decode(dist.sample(torch.Generator().manual_seed(3))).sample.pow(2).mean() + dist.kl().mean()).backward()
    _assert_same_gradients(ref, own)


def test_to_diffusers_gives_diffusers_network_with_the_same_weights():
    _, own = _pair(diffusers.UNet2DConditionModel, nets.UNet2DConditionModel, AUDIOLDM)
    back = own.to_diffusers()
    assert isinstance(back, diffusers.UNet2DConditionModel)
    x, kw = _inputs(AUDIOLDM, (16, 16), tokens=False)
    with torch.no_grad():
        assert torch.allclose(back(x, **kw).sample, own(x, **kw).sample, atol=1e-5)
    _, vae = _pair(diffusers.AutoencoderKL, nets.AutoencoderKL, VAE)
    assert isinstance(vae.to_diffusers(), diffusers.AutoencoderKL)


def test_configurations_not_covered_are_diffusers_classes():
    from tta_audioldm.unet import build_unet

    assert isinstance(build_unet(dict(QUICKSTART)), nets.UNet2DConditionModel)
    other = dict(QUICKSTART, mid_block_type="UNetMidBlock2DSimpleCrossAttn")
    assert nets.unet_unsupported(other) == "mid_block_type='UNetMidBlock2DSimpleCrossAttn'"
    assert isinstance(build_unet(other), diffusers.UNet2DConditionModel)
    with pytest.raises(ValueError, match="addition_embed_type"):
        nets.UNet2DConditionModel(**dict(QUICKSTART, addition_embed_type="text"))
    assert nets.vae_unsupported(dict(VAE, down_block_types=["DownBlock2D"] * 3)) is not None


def test_building_the_quickstart_networks_does_not_import_diffusers():
    """The point of the classes: a sampling process pays for torch, not for diffusers."""
    code = f"""
import sys
from tta_audioldm.unet import UNet2D
from tta_audioldm.vae import KLVAE
UNet2D(in_channels=4, channels=[32, 64], layers_per_block=1, cross_attention_dim=32, pooled_dim=32, norm_groups=16)
KLVAE(latent_channels=4, channels=[32, 64], norm_groups=16)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers', 'peft'))
print(heavy[:5])
sys.exit(1 if heavy else 0)
"""
    env_path = f"{REPO}:{REPO / 'plugins'}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr


# -- the vocoder, CLAP's text tower and its tokenizer (transformers' classes) --------------------------

transformers = pytest.importorskip("transformers")

HIFIGAN = dict(model_in_dim=16, upsample_initial_channel=32, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4],
               resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [1, 3]])


@pytest.mark.parametrize("normalize", [False, True])
def test_hifigan_is_transformers_speecht5_hifigan(normalize):
    cfg = dict(HIFIGAN, normalize_before=normalize)
    torch.manual_seed(5)
    ref = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(**cfg)).eval()
    torch.manual_seed(5)
    own = nets.SpeechT5HifiGan(**cfg).eval()
    want, got = ref.state_dict(), own.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)  # the same fresh weights
    with torch.no_grad():
        ref.mean.normal_()
        ref.scale.uniform_(0.5, 2.0)
    own.load_state_dict(ref.state_dict())
    mel = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(own(mel), ref(mel), atol=1e-6)
        assert torch.allclose(own(mel[0]), ref(mel[0]), atol=1e-6)  # one unbatched spectrogram: one wave
    assert isinstance(own.to_transformers(), transformers.SpeechT5HifiGan)


CLAP = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            projection_dim=32, max_position_embeddings=80)


def test_clap_text_tower_is_transformers_and_its_padding_does_not_count():
    torch.manual_seed(0)
    ref = transformers.ClapTextModelWithProjection(transformers.ClapTextConfig(**CLAP)).eval()
    own = nets.ClapTextModelWithProjection(**CLAP).eval()
    assert list(own.state_dict()) == list(ref.state_dict())
    own.load_state_dict(ref.state_dict())
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[0, 5], ids[0, 6:], ids[1, -1], ids[2, -1] = 0, 2, 1, 2, 2
    mask = (ids != 1).long()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).text_embeds
        got = own(ids, mask).text_embeds
        assert torch.allclose(got, want, atol=1e-5)
        longer = torch.cat([ids[:1], torch.ones(1, 4, dtype=torch.long)], dim=1)  # more padding: the same embedding
        assert torch.allclose(own(longer, (longer != 1).long()).text_embeds[0], got[0], atol=1e-5)
    back = own.to_transformers()
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids, attention_mask=mask).text_embeds, want, atol=1e-6)


def _bpe_tokenizer_folder(folder: Path) -> Path:
    """A RoBERTa byte-level BPE tokenizer with a few merges, saved by transformers."""
    import json

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{ch: 4 + i for i, ch in enumerate(chars)}}
    merges = ["Ġ d", "Ġd o", "Ġdo g", "b a", "ba r", "bar k", "Ġ bark", "a i", "r ai", "rai n", "Ġ rain"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<mask>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = transformers.RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    saved = folder / "saved"
    tok.save_pretrained(saved)
    return saved


def test_tokenizer_json_gives_transformers_ids(tmp_path):
    from tta_audioldm.pretrained import JsonTokenizer, json_tokenizer

    folder = _bpe_tokenizer_folder(tmp_path / "tok")
    assert (folder / "tokenizer.json").is_file()
    ours, theirs = json_tokenizer(str(folder)), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert isinstance(ours, JsonTokenizer) and len(ours) == len(theirs) and ours.model_max_length == 16
    texts = ["a dog barks in the rain", "", "dog  bark\train", "café ünïcode 🐦 chirps",
             "a very long prompt that is longer than sixteen tokens by a good margin indeed"]
    for kw in (dict(padding="max_length", max_length=16, truncation=True), dict(padding=True),
               dict(padding="max_length", max_length=10, truncation=True)):
        want = theirs(texts, return_tensors="pt", **kw)
        got = ours(texts, return_tensors="pt", **kw)
        assert torch.equal(got.input_ids, want.input_ids), kw
        assert torch.equal(got.attention_mask, want.attention_mask), kw
    assert ours(["a dog"]).input_ids[0][:1] == [0]  # RoBERTa's <s> first
    assert isinstance(ours.to_transformers(), transformers.PreTrainedTokenizerBase)


def test_sampling_an_imported_audioldm_run_imports_neither_diffusers_nor_transformers(tmp_path):
    """The run tta-run import writes from a diffusers AudioLDM pipeline (every part covered by
    tta_audioldm.nets) samples with torch and the tokenizers library only. (The first call at a
    new shape estimates its memory on fake tensors, which imports torch's compiler; the run
    keeps the estimate, so the calls after it do not.)"""
    from test_audioldm_import import tiny_pipeline

    from tta_core.cli import main

    tiny_pipeline(tmp_path)  # saved in tmp_path / "pipe"
    assert main(["import", "audioldm-diffusers", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 0
    code = f"""
import sys
from tta_core.cli import main
code = main([{str(tmp_path / 'run' / 'recipe.yaml')!r}, "sample", "--text", "a dog", "--steps", "2", "--duration",
             "0.64", "--out", {str(tmp_path / 'out')!r}, "--no-progress"])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers', 'peft')
               or m.startswith('torch._dynamo'))
print(heavy[:5])
sys.exit(code or (1 if heavy else 0))
"""
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"PYTHONPATH": f"{REPO}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin",
                                  "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "out" / "manifest.jsonl").is_file()


def test_clap_text_reads_a_transformers_folder_into_its_own_tower(tmp_path):
    """pretrained: a folder transformers saved (config.json + model.safetensors) builds tta's
    tower from the file's tensors and embeds prompts as transformers' tower and tokenizer do."""
    from tta_audioldm.clap_text import ClapTextConditioner

    torch.manual_seed(0)
    ref = transformers.ClapTextModelWithProjection(transformers.ClapTextConfig(**dict(CLAP, vocab_size=300))).eval()
    ref.save_pretrained(tmp_path / "text_encoder")
    tokenizer = _bpe_tokenizer_folder(tmp_path / "tok")
    cond = ClapTextConditioner(pretrained=str(tmp_path / "text_encoder"), tokenizer=str(tokenizer))
    assert isinstance(cond.model, nets.ClapTextModelWithProjection)
    texts = ["a dog barks in the rain", ""]
    enc = transformers.AutoTokenizer.from_pretrained(str(tokenizer))(texts, padding="max_length", max_length=16,
                                                                     truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
                                             .text_embeds, dim=-1)
        assert torch.allclose(cond.encode_text(texts).pooled, want, atol=1e-5)
