"""`tta-run import amphion-tta`: checkpoints in Amphion's TTA layout (its AutoencoderKL and
AudioLDM trainers' `{"model": ...}` files, its HiFi-GAN generator and config.json), written here
from tiny random networks of the latent-diffusion code Amphion's are (the original `audioldm`
package's U-Net with T5 cross-attention and `num_heads`, its VAE without attention), become a
run of recipes/amphion_tta.yaml whose networks compute what those networks compute, on mels
laid out as tta lays them ([frames, mels]) where Amphion's are [mels, frames]."""

import json
import types

import pytest
import torch

from tta_core.cli import main
from tta_core.interfaces import Conditioning

from test_audioldm_ckpt import HParams, original_audioldm

VOCODER = dict(resblock="1", upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
               upsample_initial_channel=32, resblock_kernel_sizes=[3, 7, 11],
               resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], num_mels=80, sampling_rate=16000,
               hop_size=256, n_fft=1024)


def _randomise(*modules):
    for m in modules:
        m.eval()
        with torch.no_grad():  # zero-initialised output layers would hide mapping mistakes
            for p in m.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.05)


@pytest.fixture(scope="module")
def amphion(tmp_path_factory, tiny_t5):
    nets = original_audioldm()
    root = tmp_path_factory.mktemp("amphion")
    torch.manual_seed(0)
    unet = nets.UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32,
                          attention_resolutions=[1, 2], num_res_blocks=1, channel_mult=[1, 2], num_heads=8,
                          use_spatial_transformer=True, transformer_depth=1, context_dim=16, legacy=False)
    dd = dict(ch=32, out_ch=1, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[], in_channels=1,
              resolution=64, z_channels=4, double_z=True, attn_type="none")  # Amphion's VAE has no attention
    encoder, decoder = nets.Encoder(**dd), nets.Decoder(**dd)
    quant, post_quant = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    vocoder = nets.Generator(HParams(VOCODER))
    _randomise(unet, encoder, decoder, quant, post_quant, vocoder)
    vae_state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    vae_state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    vae_state |= {f"quant_conv.{k}": v for k, v in quant.state_dict().items()}
    vae_state |= {f"post_quant_conv.{k}": v for k, v in post_quant.state_dict().items()}
    # as Amphion's trainers save them
    torch.save({"model": vae_state, "optimizer": {"state": {}, "param_groups": []}, "step": 10, "epoch": 1},
               root / "step-0000010_loss-0.5.pt")
    torch.save({"model": {f"unet.{k}": v for k, v in unet.state_dict().items()}, "step": 20, "epoch": 1,
                "batch_size": 12}, root / "audioldm-step-20.pt")
    torch.save({"generator": vocoder.state_dict()}, root / "g_00000100")
    (root / "config.json").write_text(json.dumps(VOCODER))
    run = root / "run"
    assert main(["import", "amphion-tta", str(root / "g_00000100"), str(root / "audioldm-step-20.pt"),
                 str(root / "config.json"), str(root / "step-0000010_loss-0.5.pt"), "--out", str(run),
                 "--set", f"components.text={{type: t5, pretrained: {tiny_t5}, max_length: 16}}",
                 "--set", "audio.duration=1.024"]) == 0
    from tta_core.sampling import load_pipeline

    return types.SimpleNamespace(root=root, run=run, unet=unet, encoder=encoder, decoder=decoder, quant=quant,
                                 post_quant=post_quant, vocoder=vocoder,
                                 ours=load_pipeline(run / "recipe.yaml", device="cpu"))


def test_the_unet_computes_the_transpose_of_what_amphions_computes(amphion):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 10, generator=g)  # Amphion's [latent mels, latent frames]
    tokens, t = torch.randn(2, 7, 16, generator=g), torch.tensor([3, 901])
    with torch.no_grad():
        expected = amphion.unet(x, t, context=tokens)
        ours = amphion.ours.denoiser(x.transpose(-1, -2), t, Conditioning(tokens=tokens)).transpose(-1, -2)
    assert expected.abs().max() > 0.1
    assert torch.allclose(ours, expected, atol=1e-5 * float(expected.abs().max()))


def test_the_vae_and_vocoder_compute_what_amphions_compute(amphion):
    ours = amphion.ours
    g = torch.Generator().manual_seed(2)
    mel = torch.randn(1, 1, 80, 16, generator=g)  # Amphion's [mels, frames]
    z = torch.randn(1, 4, 40, 8, generator=g)
    with torch.no_grad():
        mean = amphion.quant(amphion.encoder(mel))[:, :4]
        assert torch.allclose(ours.autoencoder.encode(mel.transpose(-1, -2)).transpose(-1, -2), mean, atol=1e-5)
        expected = amphion.decoder(amphion.post_quant(z))
        got = ours.autoencoder.decode(z.transpose(-1, -2)).transpose(-1, -2)
        assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))
        amphion.vocoder.remove_weight_norm()  # as Amphion's inference does
        wave = amphion.vocoder(mel[:, 0])[:, 0]
        ours_wave = ours.vocoder(mel.transpose(-1, -2))
    assert ours_wave.shape == (1, 16 * 256)
    assert torch.allclose(ours_wave, wave[:, : 16 * 256], atol=1e-5 * float(wave.abs().max()))


@pytest.mark.slow
def test_the_imported_run_samples_and_fine_tunes(amphion, tmp_path):
    info = json.loads((amphion.run / "imported.json").read_text())
    assert info["format"] == "amphion-tta"
    assert main([str(amphion.run / "recipe.yaml"), "sample", "--text", "w1 w2", "--steps", "2",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    import soundfile

    row = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    wave, rate = soundfile.read(tmp_path / "out" / row["file"])
    assert rate == 16000 and wave.shape == (16384,) and abs(wave).max() > 0


def test_files_that_are_not_amphions_are_refused(amphion, tmp_path, capsys):
    torch.save({"model": {"weight": torch.zeros(3)}}, tmp_path / "other.pt")
    assert main(["import", "amphion-tta", str(tmp_path / "other.pt"), "--out", str(tmp_path / "a")]) == 2
    assert "neither Amphion's AutoencoderKL" in capsys.readouterr().err
    assert main(["import", "amphion-tta", str(amphion.root / "g_00000100"), str(amphion.root / "audioldm-step-20.pt"),
                 "--out", str(tmp_path / "b")]) == 2
    assert "config.json" in capsys.readouterr().err and not (tmp_path / "b").exists()
