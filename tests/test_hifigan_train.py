"""The `hifigan` objective: trains the recipe's HiFi-GAN vocoder (generator, multi-period and
multi-scale discriminators) on waveform crops and their log-mels."""

import json
from pathlib import Path

import pytest
import torch

from tta_core.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "vocoder_hifigan_tiny.yaml"


def _metrics(run):
    return [json.loads(x) for x in (run / "vocoder" / "logs" / "metrics.jsonl").read_text().splitlines()]


def _train(sets, run, *extra):
    return main([str(RECIPE), "train", "--run-dir", str(run), "--no-progress",
                 "--set", f"data.train={{type: jsonl, manifest: {sets / 'a' / 'manifest.jsonl'}}}",
                 "--set", "train.vocoder.log_every=1", *extra])


def test_a_step_trains_the_generator_and_the_discriminators(sets, tmp_path):
    from safetensors.torch import load_file

    from tta_core.discovery import get_registry
    from tta_core.recipe import build, load_recipe

    assert _train(sets, tmp_path / "run", "--max-steps", "2") == 0
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 2 and all(k in rows[0] for k in ("generator", "discriminator", "log/mel_l1", "log/feature"))
    assert all(torch.isfinite(torch.tensor(r["generator"])) for r in rows)
    ckpt = tmp_path / "run/vocoder/checkpoints/step-00000002"
    trained = load_file(ckpt / "vocoder.safetensors")
    assert (ckpt / "vocoder_discriminators.safetensors").is_file()
    recipe = load_recipe(RECIPE)
    torch.manual_seed(0)
    fresh = build(recipe.components["vocoder"], "vocoder", get_registry(), audio=recipe.audio).state_dict()
    assert set(fresh) == set(trained) and any(not torch.equal(fresh[k], trained[k]) for k in fresh)


@pytest.mark.slow
def test_the_mel_loss_falls_as_the_generator_learns(sets, tmp_path):
    # the mel loss alone (discriminators later), at a higher rate: the generator learns to invert mels
    assert _train(sets, tmp_path / "run", "--max-steps", "60", "--set", "train.vocoder.objective.disc_start=1000",
                  "--set", "train.vocoder.optimizer.lr=0.002") == 0
    l1 = [r["log/mel_l1"] for r in _metrics(tmp_path / "run")]
    assert "discriminator" not in _metrics(tmp_path / "run")[-1]
    assert sum(l1[-10:]) / 10 < 0.75 * sum(l1[:10]) / 10, l1  # measured: 2.15 -> 1.33

    # eval --reconstruction on a vocoder recipe: the trained vocoder and Griffin-Lim on the same clips
    assert main([str(RECIPE), "eval", "--reconstruction", "--run-dir", str(tmp_path / "run"), "--n-items", "6",
                 "--set", f"data.train={{type: jsonl, manifest: {sets / 'a' / 'manifest.jsonl'}}}",
                 "--set", f"data.valid={{type: jsonl, manifest: {sets / 'b' / 'manifest.jsonl'}}}",
                 "--out", str(tmp_path / "rec")]) == 0
    report = json.loads((tmp_path / "rec" / "eval.json").read_text())
    assert set(report["vocoders"]) == {"vocoder", "griffin_lim"} and report["counts"]["used"] == 6
    for row in report["vocoders"].values():
        assert set(row) == {"mel_l1", "psnr", "ssim", "lsd", "si_sdr"}
        assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
    assert report["weights"]["vocoder"].endswith("step-00000060/vocoder.safetensors")


def test_the_stage_needs_a_trainable_hifigan_of_the_recipes_hop(sets, tmp_path, capsys):
    assert _train(sets, tmp_path / "a", "--max-steps", "1", "--set", "components.vocoder={type: griffin_lim}") == 2
    assert "no trainable weights" in capsys.readouterr().err
    assert _train(sets, tmp_path / "b", "--max-steps", "1", "--set", "audio.mel.hop=256") == 1
    assert "with hop 160; the recipe's audio section has 64 bands at 16000 Hz with hop 256" in capsys.readouterr().err


@pytest.mark.slow
def test_the_published_size_recipe_validates_and_takes_a_real_size_step(sets, tmp_path):
    from safetensors import safe_open

    from tta_core.checkpoint import latest_checkpoint

    recipe = REPO / "recipes" / "vocoder_hifigan_16k.yaml"
    assert main([str(recipe), "validate"]) == 0
    # AudioLDM's generator (1024 channels) and HiFi-GAN's discriminators, one step on 8192-sample crops
    assert main([str(recipe), "train", "--run-dir", str(tmp_path / "run"), "--no-progress", "--max-steps", "1",
                 "--skip-memory-check", "--set", f"data.train={{type: jsonl, manifest: {sets / 'a' / 'manifest.jsonl'}}}",
                 "--set", "train.vocoder.batch_size=2"]) == 0
    ckpt = latest_checkpoint(tmp_path / "run" / "vocoder" / "checkpoints")
    assert ckpt is not None and ckpt.step == 1
    with safe_open(str(ckpt.path / "vocoder.safetensors"), "pt") as f:
        assert f.get_slice("net.conv_pre.weight").get_shape() == [1024, 64, 7]


def test_the_multi_resolution_stft_loss_equals_auraloss():
    auraloss = pytest.importorskip("auraloss")
    from tta_audioldm.hifigan_train import STFT_RESOLUTIONS, stft_loss

    g = torch.Generator().manual_seed(0)
    real = torch.randn(3, 8000, generator=g) * 0.3
    fake = real + 0.1 * torch.randn(3, 8000, generator=g)
    reference = auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=[r[0] for r in STFT_RESOLUTIONS], hop_sizes=[r[1] for r in STFT_RESOLUTIONS],
        win_lengths=[r[2] for r in STFT_RESOLUTIONS], eps=1e-7)
    ours = stft_loss(fake, real)
    assert torch.allclose(ours, reference(fake[:, None], real[:, None]), rtol=1e-5, atol=1e-6)
    assert stft_loss(real, real) == 0  # and it tells a wave from a noisier one
    assert stft_loss(real + 0.3 * torch.randn(3, 8000, generator=g), real) > ours


def test_the_stft_loss_joins_the_generators_and_bad_settings_are_refused(sets, tmp_path, capsys):
    assert _train(sets, tmp_path / "run", "--max-steps", "2", "--set", "train.vocoder.objective.stft_weight=2.5") == 0
    rows = _metrics(tmp_path / "run")
    assert all(r["log/stft"] > 0 for r in rows)
    for bad, said in (("stft_weight=-1", "stft_weight must be >= 0"),
                      ("stft_resolutions=[[512, 128, 1024]]", "win <= n_fft")):
        assert _train(sets, tmp_path / "bad", "--max-steps", "1", "--set", f"train.vocoder.objective.{bad}") == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "bad" / "vocoder" / "checkpoints").exists()
