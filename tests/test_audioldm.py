"""The AudioLDM family plugin: conformance, loading weights from disk, the VAE-GAN objective,
and the quickstart recipe end to end on a tiny synthetic set."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tta_core.cli import main
from tta_core.checkpoint import latest_checkpoint
from tta_core.data.config import AudioConfig
from tta_core.errors import TtaError
from tta_core.interfaces import Conditioning
from tta_core.testing.conformance import check_autoencoder, check_conditioner, check_denoiser, check_vocoder

from tta_audioldm.t5 import T5Conditioner
from tta_audioldm.unet import UNet2D
from tta_audioldm.vae import KLVAE
from tta_audioldm.vocoders import GriffinLim, HiFiGAN

REPO = Path(__file__).resolve().parents[1]
AUDIO = AudioConfig(duration=0.64)


def tiny_vae(**options):
    return KLVAE(latent_channels=4, channels=(8, 16), layers_per_block=1, norm_groups=4, mid_attention=False, audio=AUDIO,
                 **options)


def test_kl_vae_conforms_and_pads_odd_lengths():
    torch.manual_seed(0)
    vae = tiny_vae()
    check_autoencoder(vae, torch.randn(2, 1, 64, 64))
    z = vae.encode(torch.randn(1, 1, 63, 64))
    assert z.shape == (1, *vae.latent_shape(63)) == (1, 4, 32, 32)


def test_kl_vae_centres_its_input_and_answers_in_log_mel_units():
    torch.manual_seed(0)
    plain = tiny_vae()
    centred = tiny_vae(mel_mean=-5.0, mel_std=2.0)
    centred.load_state_dict(plain.state_dict())
    mel = torch.randn(2, 1, 64, 64) * 2 - 5
    torch.testing.assert_close(centred.encode(mel), plain.encode((mel + 5) / 2))
    z = torch.randn(2, 4, 32, 32)
    torch.testing.assert_close(centred.decode(z), plain.decode(z) * 2 - 5)
    torch.testing.assert_close(centred(mel, sample=False)[0], plain((mel + 5) / 2, sample=False)[0] * 2 - 5)
    check_autoencoder(centred, mel)
    with pytest.raises(ValueError, match="mel_std must be positive"):
        tiny_vae(mel_std=0.0)


def test_kl_vae_posterior_std_holds_the_noise_at_that_share_of_the_latent_spread(sounds):
    """posterior_std: the posterior's noise is that share of the scaled latent's spread, what
    the latent cache stores and what the decoder trains on, however the scale moves."""
    from tta_audioldm.vae_gan import VAEGAN
    from tta_core.data.dataset import AudioTextDataset, collate
    from tta_datasets.readers import jsonl

    torch.manual_seed(0)
    learned, fixed = tiny_vae(mel_mean=-5.0, mel_std=2.0), tiny_vae(mel_mean=-5.0, mel_std=2.0, posterior_std=0.25)
    fixed.load_state_dict(learned.state_dict())
    mel = collate([AudioTextDataset(jsonl(str(sounds)), AUDIO, train=False)[i] for i in range(8)])["mel"]
    objective = VAEGAN()
    objective.bare = fixed
    with torch.no_grad():
        for _ in range(60):  # scale-by-std as the VAE stage tracks it, from posterior samples
            objective._track_scale(fixed.posterior(mel))
    scale = float(fixed.scale_factor)
    assert scale != 1.0
    with torch.no_grad():
        mean, std = fixed.encode_moments(mel)
        # the mean is the learned VAE's; only the noise differs
        torch.testing.assert_close(mean, learned.posterior(mel).mean * scale)
        samples = fixed.encode(mel, sample=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(std, torch.full_like(std, 0.25))
    assert abs(float(samples.std()) - 1.0) < 0.05  # the tracked scale takes the fixed noise into account
    assert abs(float((samples - mean).std()) - 0.25) < 0.02
    # the learned posterior's noise is another share (here, a fresh encoder's: most of it)
    learned.scale_factor.fill_(scale)
    with torch.no_grad():
        assert float(learned.encode_moments(mel)[1].mean()) > 0.5
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="posterior_std"):
            tiny_vae(posterior_std=bad)


def test_unet2d_patches_run_the_network_at_half_size_and_give_the_latent_back():
    torch.manual_seed(0)
    unet = UNet2D(in_channels=4, channels=(16, 32), layers_per_block=1, cross_attention_dim=8, norm_groups=8,
                  head_dim=8, patch_size=2)
    seen = []
    unet.unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[1:])))
    cond = Conditioning(tokens=torch.randn(3, 5, 8), mask=torch.ones(3, 5, dtype=torch.bool))
    check_denoiser(unet, torch.randn(3, 4, 13, 8), cond)  # 13 rows: padded to 16, then 2x2 patches
    assert seen[0] == (16, 8, 4)
    with pytest.raises(ValueError, match="patch_size"):
        UNet2D(in_channels=4, cross_attention_dim=8, patch_size=2, diffusers_config={"in_channels": 4})
    with pytest.raises(ValueError, match="patch_size is a whole number of at least 1"):
        UNet2D(in_channels=4, cross_attention_dim=8, patch_size=0)
    with pytest.raises(ValueError, match="patch_size"):
        UNet2D(in_channels=4, cross_attention_dim=8, patch_size=[1, 2, 2])


def test_unet2d_rectangular_patches_keep_every_frame_and_fold_frequency():
    from tta_audioldm.unet import _patch, _unpatch

    torch.manual_seed(0)
    unet = UNet2D(in_channels=4, channels=(16, 32), layers_per_block=1, cross_attention_dim=8, norm_groups=8,
                  head_dim=8, patch_size=[1, 2])
    seen = []
    unet.unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[1:])))
    cond = Conditioning(tokens=torch.randn(3, 5, 8), mask=torch.ones(3, 5, dtype=torch.bool))
    check_denoiser(unet, torch.randn(3, 4, 13, 8), cond)  # 13 rows padded to 14; 8 columns fold to 4
    assert seen[0] == (8, 14, 4)
    x = torch.randn(2, 3, 6, 8)
    assert torch.equal(_unpatch(_patch(x, (1, 2)), (1, 2)), x)
    assert torch.equal(_patch(x, (2, 2)), torch.nn.functional.pixel_unshuffle(x, 2))  # square: as before
    # each output position holds its own time step's pair of frequency rows
    folded = _patch(x, (1, 2))
    assert torch.equal(folded[:, 0::2], x[:, :, :, 0::2]) and torch.equal(folded[:, 1::2], x[:, :, :, 1::2])


@pytest.mark.parametrize("height", [16, 13])
def test_unet2d_conforms_with_tokens_and_pooled(height):
    torch.manual_seed(0)
    unet = UNet2D(in_channels=4, channels=(16, 32), layers_per_block=1, cross_attention_dim=8, pooled_dim=8,
                  norm_groups=8, head_dim=8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    cond = Conditioning(tokens=torch.randn(3, 5, 8), mask=mask, pooled=torch.randn(3, 8))
    check_denoiser(unet, torch.randn(3, 4, height, 8), cond)


def test_unet2d_pooled_only_and_clear_width_errors():
    torch.manual_seed(0)
    unet = UNet2D(in_channels=4, channels=(16, 32), layers_per_block=1, pooled_dim=8, norm_groups=8, head_dim=8,
                  attention_levels=[False, True])
    check_denoiser(unet, torch.randn(2, 4, 8, 8), Conditioning(pooled=torch.randn(2, 8)))
    with pytest.raises(ValueError, match="expects a 8-wide pooled vector, got 6"):
        unet(torch.randn(2, 4, 8, 8), torch.ones(2), Conditioning(pooled=torch.randn(2, 6)))


def test_t5_from_config_masks_and_truncates(caplog):
    torch.manual_seed(0)
    t5 = T5Conditioner(config={"d_model": 16, "num_layers": 1, "num_heads": 2}, max_length=8)
    check_conditioner(t5)
    out = t5.encode_text(["hi", "a much longer prompt than eight bytes"])
    assert out.tokens.shape == (2, 8, 16) and out.mask[0].tolist() == [True] * 3 + [False] * 5
    assert torch.equal(out.tokens[0, 3:], torch.zeros(5, 16))  # padding carries nothing
    assert "truncated" in caplog.text


def test_t5_from_config_over_hashed_words_sees_words_not_spelling():
    torch.manual_seed(0)
    t5 = T5Conditioner(config={"d_model": 16, "num_layers": 1, "num_heads": 2, "tokenizer": "words",
                               "vocab_size": 512}, max_length=8)
    check_conditioner(t5)
    ids, mask, _ = t5.bytes(["A dog, barks!", "a dog barks", "a cat barks"], 8)
    assert mask.sum(1).tolist() == [4, 4, 4]  # three words and the end token
    assert torch.equal(ids[0], ids[1]) and ids[2, 1] != ids[1, 1] and torch.equal(ids[2, 2:], ids[1, 2:])
    out = t5.encode_text(["A dog, barks!", "a dog barks"])
    assert torch.allclose(out.tokens[0], out.tokens[1])  # case and punctuation do not change the words
    with pytest.raises(ValueError, match="tokenizer"):
        T5Conditioner(config={"d_model": 16, "tokenizer": "bpe"})


def _word_tokenizer(folder: Path, words: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def _tiny_t5(folder: Path):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(vocab_size=200, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    model.save_pretrained(folder)
    return model


def test_t5_pretrained_from_a_local_folder(tmp_path):
    model = _tiny_t5(tmp_path / "t5")
    _word_tokenizer(tmp_path / "t5", words=150)
    t5 = T5Conditioner(pretrained=str(tmp_path / "t5")).eval()
    out = t5.encode_text(["w1 w2 w3", "w4"])
    ids = torch.tensor([[4, 5, 6], [7, 0, 0]])
    expected = model.eval()(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert torch.allclose(out.tokens[0], expected[0], atol=1e-5)
    assert out.mask.tolist() == [[True] * 3, [True, False, False]]


def test_a_degenerate_tokenizer_is_refused_with_what_is_missing(tmp_path):
    _tiny_t5(tmp_path / "t5")
    _word_tokenizer(tmp_path / "t5", words=2)
    with pytest.raises(TtaError, match="has only 5 tokens: its vocabulary files are missing"):
        T5Conditioner(pretrained=str(tmp_path / "t5"))


def test_griffin_lim_inverts_the_recipes_mel():
    from tta_core.data.mel import log_mel

    t = torch.arange(AUDIO.num_samples) / 16000
    wave = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None]
    mel = log_mel(wave, AUDIO)
    gl = GriffinLim(audio=AUDIO)
    check_vocoder(gl, mel)
    again = log_mel(gl(mel), AUDIO)
    silence = log_mel(1e-4 * torch.randn_like(wave), AUDIO)
    assert (again - mel).abs().mean() < 0.3 * (silence - mel).abs().mean()


def test_hifigan_loads_weights_saved_in_transformers_format(tmp_path):
    torch.manual_seed(0)
    small = {"upsample_initial_channel": 64}
    fresh = HiFiGAN(config=small).eval()
    fresh.net.to_transformers().save_pretrained(tmp_path / "vocoder")  # written by transformers itself
    loaded = HiFiGAN(pretrained=str(tmp_path / "vocoder"), audio=AudioConfig()).eval()
    mel = torch.randn(2, 1, 10, 64)
    check_vocoder(loaded, mel)
    assert torch.equal(loaded(mel), fresh(mel))
    with pytest.raises(TtaError, match="hifigan expects 64 mel bands"):
        HiFiGAN(pretrained=str(tmp_path / "vocoder"), audio=AudioConfig.from_mapping({"mel": {"n_mels": 80}}))


@pytest.fixture(scope="module")
def sounds(tmp_path_factory):
    out = tmp_path_factory.mktemp("sounds")
    assert main(["synth", "sounds", "--out", str(out), "--n", "48", "--seed", "3", "--duration", "1.0"]) == 0
    return out / "manifest.jsonl"


TINY = [
    "audio.duration=0.64",
    "components.vae.channels=[8,16]", "components.vae.norm_groups=4",
    "components.text.config={d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32}",
    "components.unet.channels=[16,32]", "components.unet.attention_levels=[false,true]",
    "components.unet.cross_attention_dim=16", "components.unet.pooled_dim=16", "components.unet.norm_groups=8",
    "components.vocoder.n_iter=4",
    "train.vae.batch_size=8", "train.ldm.batch_size=8", "train.vae.precision=fp32", "train.ldm.precision=fp32",
]


def run(args, sounds, tmp_path, *extra):
    sets = [f"data.train.manifest={sounds}", *TINY, *extra]
    return main(["recipes/quickstart.yaml" if not args else args[0], *args[1:],
                 *[x for s in sets for x in ("--set", s)], "--run-dir", str(tmp_path / "run")])


def _recon_error(vae_weights, sounds):
    from tta_core.data.dataset import AudioTextDataset, collate
    from tta_datasets.readers import jsonl

    from tta_core.recipe import load_recipe

    node = load_recipe(REPO / "recipes/quickstart.yaml").get("components")["vae"]
    vae = tiny_vae(mel_mean=node.get("mel_mean", 0.0), mel_std=node.get("mel_std", 1.0))
    if vae_weights is not None:
        vae.load_state_dict(vae_weights)
    batch = collate([AudioTextDataset(jsonl(str(sounds)), AUDIO, train=False)[i] for i in range(16)])
    with torch.no_grad():
        recon = vae.decode(vae.encode(batch["mel"]))
    return (recon - batch["mel"]).abs().mean().item()


@pytest.mark.slow
def test_vae_gan_trains_a_vae_that_reconstructs_better(sounds, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run(["recipes/quickstart.yaml", "train", "--stage", "vae", "--max-steps", "40", "--no-progress"],
               sounds, tmp_path, "train.vae.optimizer.lr=0.005", "train.vae.validate_every=40") == 0
    # validation wrote reconstructions and logged their mel L1
    val = tmp_path / "run/vae/samples/step-00000040"
    assert len(list(val.glob("*-reconstruction.wav"))) == 4 and len(list(val.glob("*.png"))) == 4
    logged = [json.loads(l) for l in (tmp_path / "run/vae/logs/metrics.jsonl").read_text().splitlines()]
    assert any("valid/mel_l1" in row for row in logged)
    trained = latest_checkpoint(tmp_path / "run/vae/checkpoints").weights("vae")
    torch.manual_seed(0)
    assert _recon_error(trained, sounds) < 0.7 * _recon_error(None, sounds)
    assert float(trained["scale_factor"]) != 1.0  # scale-by-std was estimated from the data


@pytest.mark.slow
def test_a_stage_trains_on_its_own_example_length(sounds, tmp_path, monkeypatch, capsys):
    """train.<stage>.duration: the VAE learns from 0.32 s crops cut from the mels `prepare`
    cached for the recipe's 0.64 s, and the LDM stage then trains on it at full length."""
    import tta_core.data.dataset as dataset
    from tta_audioldm.vae_gan import VAEGAN

    monkeypatch.chdir(REPO)
    assert run(["recipes/quickstart.yaml", "prepare"], sounds, tmp_path) == 0
    frames = []
    losses = VAEGAN.losses
    monkeypatch.setattr(VAEGAN, "losses", lambda self, batch, *a: frames.append(batch["mel"].shape[-2])
                        or losses(self, batch, *a))

    def no_decoding(*a, **k):
        raise AssertionError("decoded an audio file the mel cache holds")

    monkeypatch.setattr(dataset, "load_clip", no_decoding)
    # (without the memory check's trial steps, so that every call seen is a training step)
    assert run(["recipes/quickstart.yaml", "train", "--stage", "vae", "--max-steps", "2", "--no-progress",
                "--skip-memory-check"], sounds, tmp_path, "train.vae.duration=0.32") == 0
    assert frames == [AudioConfig(duration=0.32).num_frames] * 2 == [32, 32]
    monkeypatch.undo()
    monkeypatch.chdir(REPO)
    assert run(["recipes/quickstart.yaml", "train", "--stage", "ldm", "--max-steps", "1", "--no-progress"],
               sounds, tmp_path, "train.vae.duration=0.32") == 0
    assert latest_checkpoint(tmp_path / "run/ldm/checkpoints").step == 1
    # an LDM stage of its own length encodes its latents from the same prepared mels
    import tta_core.training.caching as caching

    monkeypatch.setattr(caching, "load_clip", no_decoding)
    assert run(["recipes/quickstart.yaml", "train", "--stage", "ldm", "--max-steps", "2", "--no-progress"],
               sounds, tmp_path, "train.vae.duration=0.32", "train.ldm.duration=0.32") == 0
    assert latest_checkpoint(tmp_path / "run/ldm/checkpoints").step == 2

    # a length that cannot work is refused before any stage trains
    capsys.readouterr()
    for bad, why in (("0", "must be greater than 0"), ("0.01", "shorter than one STFT window")):
        assert run(["recipes/quickstart.yaml", "train", "--no-progress"], sounds, tmp_path / "bad",
                   f"train.ldm.duration={bad}") == 2
        err = capsys.readouterr().err
        assert "train.ldm.duration" in err and why in err
    assert not (tmp_path / "bad/run/vae").exists()


@pytest.mark.slow
def test_vae_gan_steps_the_discriminator_only_after_disc_start(sounds, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    args = ["recipes/quickstart.yaml", "train", "--stage", "vae", "--max-steps", "2", "--no-progress"]
    assert run(args, sounds, tmp_path / "late", "train.vae.objective.disc_start=100") == 0
    assert run(args, sounds, tmp_path / "early", "train.vae.objective.disc_start=0") == 0
    late = latest_checkpoint(tmp_path / "late/run/vae/checkpoints")
    early = latest_checkpoint(tmp_path / "early/run/vae/checkpoints")
    d_late, d_early = late.weights("discriminator"), early.weights("discriminator")
    assert any(not torch.equal(d_late[k], d_early[k]) for k in d_late)
    # before disc_start the discriminator is exactly as initialised: the same in both seeds' runs
    assert run(args, sounds, tmp_path / "late2", "train.vae.objective.disc_start=100", "train.vae.max_steps=1") == 0
    d_late1 = latest_checkpoint(tmp_path / "late2/run/vae/checkpoints").weights("discriminator")
    assert all(torch.equal(d_late[k], d_late1[k]) for k in d_late)
    assert set(late.tensors()["optimizers"]) == {"generator", "discriminator"}


@pytest.mark.slow
def test_quickstart_trains_one_step_per_stage_and_samples(sounds, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run(["recipes/quickstart.yaml", "train", "--max-steps", "1", "--no-progress"], sounds, tmp_path,
               "train.ldm.validate_every=1", "train.ldm.objective.validate_prompts=2",
               "train.ldm.objective.validate_steps=2") == 0
    # validation wrote clips and spectrograms of training captions into the run dir
    val = tmp_path / "run/ldm/samples/step-00000001"
    assert sorted(p.suffix for p in val.iterdir()) == [".png", ".png", ".txt", ".wav", ".wav"]
    out = tmp_path / "out"
    assert run(["recipes/quickstart.yaml", "sample", "--text", "a rising chirp", "--steps", "2", "--out", str(out),
                "--no-progress"], sounds, tmp_path) == 0
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["prompt"] == "a rising chirp" and (out / row["file"]).exists() and (out / row["spectrogram"]).exists()

    # the adherence check generates per label from training captions and scores every clip
    adh = tmp_path / "adh"
    assert run(["recipes/quickstart.yaml", "eval", "--adherence", "--n-per-label", "1", "--steps", "2",
                "--reference-per-label", "4", "--out", str(adh)], sounds, tmp_path) == 0
    report = json.loads((adh / "eval.json").read_text())["adherence"]
    assert report["n"] == 8 and set(report["per_label"]) == {
        "low_hum", "high_beep", "rising_chirp", "falling_chirp", "noise", "ticking", "pluck", "buzz"}
    assert report["reference_accuracy"] > 0.5  # the classifier knows real clips apart
    assert len(list(adh.glob("*.wav"))) == 8 and len(list(adh.glob("*.png"))) == 8
    # with a bar the untrained model cannot reach, the check fails
    assert run(["recipes/quickstart.yaml", "eval", "--adherence", "--generated", str(adh), "--min-accuracy", "1.0",
                "--reference-per-label", "4"], sounds, tmp_path) == 1


@pytest.mark.slow
def test_cached_latents_and_captions_train_as_encoding_every_step(tmp_path, monkeypatch, caplog):
    import logging
    import shutil

    monkeypatch.chdir(REPO)
    # clips as long as the window: one crop, the same in both paths
    assert main(["synth", "sounds", "--out", str(tmp_path / "data"), "--n", "16", "--seed", "1",
                 "--duration", "0.64"]) == 0
    sounds = tmp_path / "data/manifest.jsonl"
    _tiny_t5(tmp_path / "t5")
    _word_tokenizer(tmp_path / "t5", words=150)
    frozen_text = [f"components.text={{type: t5, pretrained: {tmp_path / 't5'}, max_length: 16}}",
                   "train.ldm.trains=[unet]", "train.ldm.frozen=[vae, text]", "train.ldm.log_every=1"]
    assert run(["recipes/quickstart.yaml", "train", "--stage", "vae", "--max-steps", "1", "--no-progress"],
               sounds, tmp_path / "base") == 0
    ldm = ["recipes/quickstart.yaml", "train", "--stage", "ldm", "--max-steps", "3", "--no-progress"]
    for cache in ("false", "true"):
        shutil.copytree(tmp_path / "base/run", tmp_path / cache / "run")
        assert run(ldm, sounds, tmp_path / cache, *frozen_text, f"train.ldm.objective.cache={cache}") == 0

    def losses(which):
        rows = [json.loads(line) for line in (tmp_path / which / "run/ldm/logs/metrics.jsonl").read_text().splitlines()]
        return [row["main"] for row in rows if "main" in row]

    assert len(losses("true")) == 3
    assert losses("true") == pytest.approx(losses("false"), rel=1e-4)
    cached, fresh = (latest_checkpoint(tmp_path / w / "run/ldm/checkpoints").weights("unet") for w in ("true", "false"))
    assert all(torch.allclose(cached[k], fresh[k], atol=1e-5) for k in cached)
    caches = sorted(p.name.split("-")[0] for p in (tmp_path / "true/run/cache").iterdir())
    assert caches == ["latent", "text"] and not (tmp_path / "false/run/cache").exists()

    # resuming reads the caches the first run filled
    caplog.set_level(logging.INFO, logger="tta.train")
    assert run(ldm[:-3] + ["--max-steps", "4", "--no-progress"], sounds, tmp_path / "true", *frozen_text) == 0
    assert "0 encoded, 16 reused" in caplog.text and len(losses("true")) == 4


def test_latent_cache_crops_on_the_latent_grid_and_a_changed_vae_gets_a_new_cache(sounds, tmp_path):
    from tta_core.data.cache import latent_cache
    from tta_core.data.mel import clip_mel
    from tta_core.data.audio import load_clip
    from tta_core.data.dataset import collate
    from tta_core.training.caching import CachedLatentDataset, component_digest, fill_latent_cache, latent_stride
    from tta_datasets.readers import jsonl

    items = jsonl(str(sounds))[:4]  # 1 s clips, 0.64 s windows
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    node = {"type": "kl_vae", "channels": [8, 16]}
    name = component_digest(node, vae)
    cache = latent_cache(tmp_path, AUDIO, name)
    assert fill_latent_cache(cache, vae, items, AUDIO, device="cpu") == {"encoded": 4, "reused": 0, "bad": 0}
    assert fill_latent_cache(cache, vae, items, AUDIO, device="cpu") == {"encoded": 0, "reused": 4, "bad": 0}

    stride = latent_stride(vae, AUDIO)
    window = vae.latent_shape(AUDIO.num_frames)[1]
    assert stride == 2 and window == 32
    data = CachedLatentDataset(items, AUDIO, cache, stride=stride, domain="mel", window=window, seed=0)
    with torch.no_grad():
        mean, std = vae.encode_moments(clip_mel(load_clip(items[0].audio, AUDIO).wave, AUDIO)[None, None])
    offsets = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        example = data[0]
        assert example["latent"].shape == (4, window, 32)
        match = [o for o in range(mean.shape[2] - window + 1)
                 if torch.allclose(example["latent"], mean[0, :, o:o + window], atol=1e-5)]
        assert match, "a cached example is a crop of the clip's latent"
        assert torch.allclose(example["latent_std"], std[0, :, match[0]:match[0] + window], atol=1e-5)
        offsets.add(match[0])
    # the crop moves from epoch to epoch and stays where the mel crop would (hop-aligned, in the clip)
    max_frames = (load_clip(items[0].audio, AUDIO).wave.shape[0] - AUDIO.num_samples) // AUDIO.mel.hop
    assert len(offsets) > 2 and max(offsets) * stride <= max_frames
    batch = collate([data[i] for i in range(4)] + [None])
    assert batch["latent"].shape == (4, 4, window, 32) and len(batch["caption"]) == 4

    # checkpointing changes how the autoencoder trains, not its latents: the same cache folder
    assert component_digest({**node, "gradient_checkpointing": True}, vae) == name
    assert component_digest({**node, "channels": [8, 32]}, vae) != name
    with torch.no_grad():
        vae.vae.encoder.conv_in.weight.add_(0.01)
    assert component_digest(node, vae) != name  # retrained weights: a new cache folder


@pytest.mark.parametrize("positions", [64, 1024])
def test_unet2d_attention_computes_what_diffusers_does_for_training_and_sampling(positions):
    """unet2d's attention processor picks a kernel by sequence length and by whether
    gradients are on; every choice computes diffusers' attention."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from tta_audioldm.unet import _attention_processor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    x = torch.randn(2, positions, 32, requires_grad=True)
    attn.set_processor(AttnProcessor2_0())
    ref = attn(x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    attn.set_processor(_attention_processor())
    ours = attn(x)
    (grad,) = torch.autograd.grad(ours.square().sum(), x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref.detach(), atol=1e-5, rtol=1e-4)
