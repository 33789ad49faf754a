"""`tta-run import audioldm-ckpt`: a checkpoint in the original AudioLDM layout, written here
from tiny random networks built with the original code (the `audioldm` package's U-Net, VAE
and HiFi-GAN; laion-clap's RoBERTa text branch and projection), becomes a run directory whose
components compute what the original networks compute."""

import importlib.util
import json
import sys
import types

import pytest
import torch

from tta_core.cli import main

from test_audioldm_import import byte_roberta_tokenizer

N_MELS, CLAP = 64, 32
AUDIOLDM_VOCODER = dict(resblock="1", upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                        upsample_initial_channel=64, resblock_kernel_sizes=[3, 7, 11],
                        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], num_mels=N_MELS)


def original_audioldm():
    """The original AudioLDM networks (U-Net, VAE encoder/decoder, HiFi-GAN), imported without
    the package's __init__ (which pulls in its whole pipeline and pinned dependencies)."""
    spec = importlib.util.find_spec("audioldm")
    if spec is None:
        pytest.skip("the original audioldm package is not installed (make install adds it)")
    saved = {k: v for k, v in sys.modules.items() if k == "audioldm" or k.startswith("audioldm.")}
    package = types.ModuleType("audioldm")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("audioldm.utils")
    utils.instantiate_from_config = lambda config: None
    sys.modules.update({"audioldm": package, "audioldm.utils": utils})
    try:
        openai = importlib.import_module("audioldm.latent_diffusion.openaimodel")
        vae = importlib.import_module("audioldm.variational_autoencoder.modules")
        hifigan = importlib.import_module("audioldm.hifigan.models")
    finally:
        for k in [k for k in sys.modules if k == "audioldm" or k.startswith("audioldm.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return types.SimpleNamespace(UNetModel=openai.UNetModel, Encoder=vae.Encoder, Decoder=vae.Decoder,
                                 Generator=hifigan.Generator)


@pytest.fixture(scope="module")
def original():
    return original_audioldm()


class HParams(dict):
    __getattr__ = dict.__getitem__


def build_original(original, vocab: int):
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    unet = original.UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 4],
        num_res_blocks=1, channel_mult=[1, 2, 2], num_head_channels=32, use_spatial_transformer=True,
        extra_film_condition_dim=CLAP, extra_film_use_concat=True)
    dd = dict(ch=32, out_ch=1, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[], in_channels=1,
              resolution=64, z_channels=4, double_z=True)
    encoder, decoder = original.Encoder(**dd), original.Decoder(**dd)
    quant, post_quant = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    vocoder = original.Generator(HParams(AUDIOLDM_VOCODER))  # weight-normalised, as a training checkpoint holds it
    text = RobertaModel(RobertaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                                      intermediate_size=96, max_position_embeddings=80, type_vocab_size=1,
                                      pad_token_id=1, layer_norm_eps=1e-5))
    projection = torch.nn.Sequential(torch.nn.Linear(64, CLAP), torch.nn.ReLU(), torch.nn.Linear(CLAP, CLAP))
    for m in (unet, encoder, decoder, vocoder, text, projection):
        m.eval()
        with torch.no_grad():  # zero-initialised output layers would hide mapping mistakes
            for p in m.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.05)
    state = {"scale_factor": torch.tensor(0.7), "betas": torch.linspace(1e-4, 0.02, 1000),
             "cond_stage_model.model.logit_scale_t": torch.tensor(1.0)}
    for prefix, m in (("model.diffusion_model.", unet), ("first_stage_model.encoder.", encoder),
                      ("first_stage_model.decoder.", decoder), ("first_stage_model.quant_conv.", quant),
                      ("first_stage_model.post_quant_conv.", post_quant), ("first_stage_model.vocoder.", vocoder),
                      ("cond_stage_model.model.text_branch.", text),
                      ("cond_stage_model.model.text_projection.", projection)):
        state.update({prefix + k: v.clone() for k, v in m.state_dict().items()})
    nets = types.SimpleNamespace(unet=unet, encoder=encoder, decoder=decoder, quant=quant, post_quant=post_quant,
                                 vocoder=vocoder, text=text, projection=projection)
    return state, nets


@pytest.fixture(scope="module")
def imported(original, tmp_path_factory):
    root = tmp_path_factory.mktemp("audioldm_ckpt")
    tok = byte_roberta_tokenizer(root / "_vocab")
    tok.save_pretrained(root / "tokenizer")  # a roberta-base snapshot's files
    state, nets = build_original(original, len(tok))
    torch.save({"state_dict": state, "global_step": 5}, root / "audioldm-s-tiny.ckpt")
    run = root / "run"
    assert main(["import", "audioldm-ckpt", str(root / "audioldm-s-tiny.ckpt"), str(root / "tokenizer"),
                 "--out", str(run), "--set", "audio.duration=0.64"]) == 0
    from tta_core.sampling import load_pipeline

    return types.SimpleNamespace(root=root, run=run, state=state, nets=nets, tok=tok,
                                 ours=load_pipeline(run / "recipe.yaml", device="cpu"))


def test_the_unet_computes_what_the_original_computes(imported):
    from tta_core.interfaces import Conditioning

    g = torch.Generator().manual_seed(1)
    x, film = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, CLAP, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = imported.nets.unet(x, t, y=film)
        ours = imported.ours.denoiser(x, t, Conditioning(pooled=film))
    assert expected.abs().max() > 0.1
    assert torch.allclose(ours, expected, atol=1e-5 * float(expected.abs().max()))
    # the original's heads are 32 channels wide: 1 head at 32 channels, 2 at 64
    assert list(imported.ours.denoiser.unet.config.attention_head_dim) == [1, 2, 2]


def test_the_vae_and_vocoder_compute_what_the_originals_compute(imported):
    nets, ours = imported.nets, imported.ours
    g = torch.Generator().manual_seed(2)
    mel, z = torch.randn(1, 1, 32, N_MELS, generator=g), torch.randn(1, 4, 16, 32, generator=g)
    with torch.no_grad():
        mean = nets.quant(nets.encoder(mel))[:, :4]
        assert torch.allclose(ours.autoencoder.encode(mel), mean * 0.7, atol=1e-5)
        expected = nets.decoder(nets.post_quant(z / 0.7))
        assert torch.allclose(ours.autoencoder.decode(z), expected, atol=1e-5 * float(expected.abs().max()))
        spec = torch.randn(1, 1, 20, N_MELS, generator=g)
        nets.vocoder.remove_weight_norm()  # what the original does before it vocodes
        wave = nets.vocoder(spec[:, 0].transpose(1, 2))[:, 0, : 20 * 160]  # trimmed to the frames, as AudioLDM does
        ours_wave = ours.vocoder(spec)
    assert ours_wave.shape == wave.shape == (1, 20 * 160)
    assert torch.allclose(ours_wave, wave, atol=1e-5 * float(wave.abs().max()))


def test_the_text_embedding_is_the_originals(imported):
    texts = ["a dog barks", "rain on a tin roof"]
    enc = imported.tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = imported.nets.text(input_ids=enc.input_ids, attention_mask=enc.attention_mask)["pooler_output"]
        expected = torch.nn.functional.normalize(imported.nets.projection(pooled), dim=-1)
        ours = imported.ours.conditioner.encode_text(texts).pooled
    assert torch.allclose(ours, expected, atol=1e-5)


def test_the_imported_run_samples(imported, tmp_path):
    info = json.loads((imported.run / "imported.json").read_text())
    assert info["format"] == "audioldm-ckpt"
    recipe = (imported.run / "recipe.yaml").read_text()
    assert "steps: 200" in recipe and "guidance: 2.5" in recipe
    assert main([str(imported.run / "recipe.yaml"), "sample", "--text", "a dog barks", "--steps", "3",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    import soundfile

    row = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    wave, rate = soundfile.read(tmp_path / row["file"])
    assert rate == 16000 and wave.shape == (10240,) and abs(wave).max() > 0


class Payload:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_a_checkpoint_that_needs_arbitrary_classes_is_refused(imported, tmp_path, capsys):
    path = tmp_path / "hostile.ckpt"
    with open(path, "wb") as f:
        torch.save({"state_dict": imported.state, "callbacks": Payload()}, f)
    assert main(["import", "audioldm-ckpt", str(path), str(imported.root / "tokenizer"), "--out", str(tmp_path / "run")]) != 0
    out = capsys.readouterr()
    assert "needs arbitrary Python classes" in out.err and "weights_only=True" in out.err
    assert "this must not run" not in out.out and not (tmp_path / "run").exists()


def test_partial_or_mismatched_weights_are_refused_with_a_diff(imported, tmp_path, capsys):
    tok = str(imported.root / "tokenizer")
    partial = {k: v for k, v in imported.state.items() if not k.startswith("first_stage_model.vocoder.")}
    torch.save({"state_dict": partial}, tmp_path / "partial.ckpt")
    assert main(["import", "audioldm-ckpt", str(tmp_path / "partial.ckpt"), tok, "--out", str(tmp_path / "a")]) == 2
    assert "not a whole AudioLDM checkpoint" in capsys.readouterr().err and not (tmp_path / "a").exists()

    broken = dict(imported.state)
    del broken["model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn1.to_q.weight"]
    broken["first_stage_model.decoder.mid.attn_1.k.weight"] = torch.zeros(32, 64, 1, 1)
    torch.save({"state_dict": broken}, tmp_path / "broken.ckpt")
    assert main(["import", "audioldm-ckpt", str(tmp_path / "broken.ckpt"), tok, "--out", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight" in err  # missing, in our names
    assert "decoder.mid_block.attentions.0.to_k.weight" in err and "(32, 64)" in err  # reshaped
    assert not (tmp_path / "b").exists()


def test_a_missing_tokenizer_is_named(imported, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ckpt = imported.root / "audioldm-s-tiny.ckpt"
    assert main(["import", "audioldm-ckpt", str(ckpt), "--out", str(tmp_path / "run")]) == 2
    assert "RoBERTa" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("channels, width", [(128, 32), (192, 32), (256, 64)])
def test_the_sizes_head_widths_are_audioldms(channels, width):
    """S, M and L (model_channels 128, 192, 256): 32 channels per head, 64 for L, as the
    original's configurations say (the weights do not hold it)."""
    from tta_audioldm.ldm_layout import audioldm_head_width

    assert audioldm_head_width({"input_blocks.0.0.weight": torch.zeros(channels, 8, 3, 3)}) == width
