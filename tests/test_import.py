"""`tta-run import diffae-birds`: weights trained with the bird-sound repository (Lightning
checkpoints of its DMAE and DiffGen modules, or plain audio-diffusion-pytorch state dicts),
written here in that layout from tiny reference models, become a run directory that samples
what the reference would, in stereo, and fine-tunes."""

import json
import os
from pathlib import Path

import pytest
import soundfile
import torch

from tta_core.cli import main

REPO = Path(__file__).resolve().parents[1]


class Hparams:  # a training script's own class: the reader must not need it
    def __init__(self, lr):
        self.lr = lr


class Payload:  # what a hostile checkpoint could hold: unpickling it would run a command
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def reference_diffae():
    """The recipe diffae_birds_tiny's autoencoder, stereo, as audio-diffusion-pytorch builds it."""
    from audio_diffusion_pytorch import DiffusionAE, LTPlugin, UNetV0, VDiffusion, VSampler
    from audio_encoders_pytorch import ME1d, TanhBottleneck

    return DiffusionAE(
        net_t=LTPlugin(UNetV0, num_filters=32, window_length=16, stride=16), dim=1, in_channels=2,
        channels=[32, 64, 64, 128], factors=[1, 2, 2, 2], items=[1, 1, 1, 1], inject_depth=2,
        encoder=ME1d(in_channels=2, channels=64, multipliers=[1, 1], factors=[2], num_blocks=[2], stft_num_fft=127,
                     stft_hop_length=32, out_channels=16, bottleneck=TanhBottleneck()),
        diffusion_t=VDiffusion, sampler_t=VSampler).eval()


def reference_diffgen(channels=(64, 128, 128)):
    from audio_diffusion_pytorch import DiffusionModel, UNetV0, VDiffusion, VSampler

    return DiffusionModel(
        net_t=UNetV0, in_channels=16, channels=list(channels), factors=[1, 2, 2], items=[1, 1, 1],
        attentions=[0, 1, 1], cross_attentions=[0, 1, 1], attention_heads=4, attention_features=32,
        embedding_features=16, embedding_max_length=16, use_embedding_cfg=True,
        diffusion_t=VDiffusion, sampler_t=VSampler).eval()


class LightningModule(torch.nn.Module):
    """The repository's DMAE / DiffGen modules: the model, and its EMA (ema-pytorch)."""

    def __init__(self, model):
        super().__init__()
        from ema_pytorch import EMA

        self.model = model
        self.ema = EMA(model, beta=0.99, power=0.75)
        with torch.no_grad():  # an EMA that has drifted from the model
            for p in self.ema.ema_model.parameters():
                p.add_(0.01 * torch.randn_like(p))


def save_lightning(module, path, marker):
    torch.save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.9.4",
                "state_dict": module.state_dict(), "hyper_parameters": Hparams(1e-4),
                "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.1)}},
                "payload": Payload(marker)}, path)


@pytest.fixture(scope="module")
def t5_folder(tiny_t5):
    return tiny_t5  # d_model 16


def sets(t5_folder, extra=()):
    values = [f"components.text={{type: t5, pretrained: {t5_folder}, max_length: 16, padding: max_length}}",
              "components.unet.embedding_features=16", "components.unet.embedding_max_length=16",
              "train.diffgen.trains=[unet]", "train.diffgen.frozen=[ae, text]", *extra]
    return [x for s in values for x in ("--set", s)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory, t5_folder):
    root = tmp_path_factory.mktemp("birds")
    torch.manual_seed(0)
    dmae, diffgen = LightningModule(reference_diffae()), LightningModule(reference_diffgen())
    marker = root / "pwned"
    save_lightning(dmae, root / "dmae.ckpt", marker)
    save_lightning(diffgen, root / "diffgen.ckpt", marker)
    run = root / "run"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code = main(["import", "diffae-birds", str(root / "dmae.ckpt"), str(root / "diffgen.ckpt"), "--out", str(run),
                     "--recipe", "recipes/diffae_birds_tiny.yaml", *sets(t5_folder)])
    finally:
        os.chdir(cwd)
    assert code == 0
    return {"run": run, "dmae": dmae, "diffgen": diffgen, "marker": marker, "root": root}


def test_lightning_checkpoints_import_with_their_ema_and_nothing_in_them_runs(imported):
    from tta_core.sampling import load_pipeline

    run = imported["run"]
    assert not imported["marker"].exists()  # the checkpoint's payload was not executed
    assert (run / "recipe.yaml").exists() and json.loads((run / "imported.json").read_text())["format"] == "diffae-birds"
    ema = load_pipeline(run / "recipe.yaml", device="cpu")  # run_dir: . -> the folder itself
    assert ema.audio.channels == 2 and ema.autoencoder.in_channels == 2  # read from the DiffAE's weights
    dmae, diffgen = imported["dmae"], imported["diffgen"]
    for ours, theirs in ((ema.autoencoder, dmae.ema.ema_model), (ema.denoiser, diffgen.ema.ema_model)):
        ref = theirs.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in ours.state_dict().items())
    raw = load_pipeline(run / "recipe.yaml", device="cpu", ema=False)
    ref = dmae.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in raw.autoencoder.state_dict().items())
    assert not torch.equal(raw.autoencoder.net.blocks[0].weight, ema.autoencoder.net.blocks[0].weight)


def test_imported_models_generate_what_the_reference_generates(imported, t5_folder):
    import tta_core
    from a_unet.blocks import T5Embedder

    text, seed, steps, decode_steps, scale = "w3 w7 w9", 5, 3, 2, 5.0
    waves, rate = tta_core.generate(imported["run"] / "recipe.yaml", [text], device="cpu", steps=steps,
                                    guidance=scale, seed=seed, decode_steps=decode_steps)
    assert rate == 16000 and waves.shape == (1, 2, 16384)

    # the EMA weights in fresh reference modules (a deep copy of an a-unet module still
    # computes partly with the original's weights, so ema_model itself cannot be run)
    diffae, diffgen = reference_diffae(), reference_diffgen()
    diffae.load_state_dict(imported["dmae"].ema.ema_model.state_dict())
    diffgen.load_state_dict(imported["diffgen"].ema.ema_model.state_dict())
    embedding = T5Embedder(model=str(t5_folder), max_length=16)([text])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noise = torch.randn(1, 16, 256, generator=g)
        latent = diffgen.sample(noise, embedding=embedding, embedding_scale=scale, num_steps=steps)
        expected = diffae.decode(latent, generator=g, num_steps=decode_steps)
    assert torch.allclose(waves, expected, atol=1e-4 * expected.abs().max())


@pytest.mark.slow
def test_sample_cli_writes_stereo_and_decode_steps_change_the_audio(imported, tmp_path):
    recipe = str(imported["run"] / "recipe.yaml")
    for steps in ("1", "3"):
        assert main([recipe, "sample", "--text", "w1 w2", "--steps", "2", "--decode-steps", steps, "--seed", "0",
                     "--out", str(tmp_path / steps), "--no-progress"]) == 0
    rows = {s: json.loads((tmp_path / s / "manifest.jsonl").read_text()) for s in ("1", "3")}
    one, _ = soundfile.read(tmp_path / "1" / rows["1"]["file"])
    three, rate = soundfile.read(tmp_path / "3" / rows["3"]["file"])
    assert rate == 16000 and one.shape == three.shape == (16384, 2)  # stereo files
    assert rows["3"]["decode_steps"] == 3 and rows["3"]["channels"] == 2
    assert rows["3"]["weights"]["ae"].endswith("ae.ema.safetensors")
    assert not (one == three).all()


def test_plain_state_dicts_import_and_mismatched_ones_are_refused_with_a_diff(tmp_path, t5_folder, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    torch.manual_seed(1)
    ae = reference_diffae()
    torch.save(ae.state_dict(), tmp_path / "diffae.pt")  # DiffusionAE's own names, net held three times
    run = tmp_path / "run"
    assert main(["import", "diffae-birds", str(tmp_path / "diffae.pt"), "--out", str(run),
                 "--recipe", "recipes/diffae_birds_tiny.yaml", *sets(t5_folder)]) == 0
    assert "no weights for 'unet'" in capsys.readouterr().out  # said, not hidden
    ckpt = next((run / "diffae" / "checkpoints").glob("step-*"))
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["ae.safetensors"]  # one set, no EMA

    wide = reference_diffgen(channels=(64, 128, 256))  # trained with other sizes than the recipe's
    torch.save(wide.state_dict(), tmp_path / "diffgen.pt")
    capsys.readouterr()
    out = tmp_path / "refused"
    assert main(["import", "diffae-birds", str(tmp_path / "diffgen.pt"), "--out", str(out),
                 "--recipe", "recipes/diffae_birds_tiny.yaml", *sets(t5_folder)]) != 0
    err = capsys.readouterr().err
    assert "shape: net." in err and "model (" in err and "file (" in err and not out.exists()
    assert main(["import", "diffae-birds", str(tmp_path / "diffgen.pt"), "--out", str(run),
                 "--recipe", "recipes/diffae_birds_tiny.yaml", *sets(t5_folder)]) != 0
    assert "not empty" in capsys.readouterr().err and (run / "recipe.yaml").exists()  # nothing lost
    assert main(["import", "diffae-birds", str(tmp_path / "diffgen.pt"), "--out", str(out),
                 "--recipe", "recipes/diffae_birds_tiny.yaml", *sets(t5_folder, ["components.unet.channels=[64,128,256]"])]) == 0


def test_an_imported_run_fine_tunes(imported, tmp_path, t5_folder):
    import shutil

    from tta_core.checkpoint import latest_checkpoint

    assert main(["synth", "birds", "--out", str(tmp_path / "birds"), "--n", "8", "--seed", "0"]) == 0
    run = tmp_path / "run"
    shutil.copytree(imported["run"], run)
    before = latest_checkpoint(run / "diffgen" / "checkpoints").weights("unet")
    assert main([str(run / "recipe.yaml"), "train", "--stage", "diffgen", "--max-steps", "2", "--no-progress",
                 "--set", f"data.train.manifest={tmp_path / 'birds/manifest.jsonl'}",  # mono files, copied to 2 channels
                 "--set", "train.diffgen.batch_size=2"]) == 0
    after = latest_checkpoint(run / "diffgen" / "checkpoints")
    assert after.step == 2
    tuned = after.weights("unet")
    assert not all(torch.equal(tuned[k], before[k]) for k in before)  # it trained from the imported weights
    assert max(float((tuned[k] - before[k]).abs().max()) for k in before) < 0.05


def test_import_lists_its_formats_and_refuses_an_unknown_one(capsys):
    assert main(["import"]) == 0
    out = capsys.readouterr().out
    assert "diffae-birds" in out and "audioldm-diffusers" in out
    assert main(["import", "diffae-bird", "x.ckpt", "--out", "nowhere"]) == 2
    assert "diffae-birds" in capsys.readouterr().err  # the closest name is suggested
