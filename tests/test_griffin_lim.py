"""Griffin-Lim's mel inverse (non-negative, or the pseudo-inverse), and ``learned_griffin_lim``:
Griffin-Lim from a magnitude a trained network shapes, trained by ``linear_spectrogram``."""

import json
from pathlib import Path

import pytest
import torch

from tta_core.cli import main
from tta_core.data.config import AudioConfig, MelConfig
from tta_core.data.mel import log_mel, mel_filterbank
from tta_core.testing.conformance import check_vocoder

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "vocoder_griffin_lim_tiny.yaml"
AUDIO = AudioConfig(sample_rate=16000, duration=1.0, mel=MelConfig(n_fft=1024, hop=160, win=1024, n_mels=64))
SMALL = "components.vocoder={type: learned_griffin_lim, channels: 32, layers: 2, inverse_iter: 10, n_iter: 8}"


def _clips(sets, name, n=8):
    import soundfile as sf

    rows = [json.loads(x) for x in (sets / name / "manifest.jsonl").read_text().splitlines()][:n]
    return torch.stack([torch.from_numpy(sf.read(sets / name / r["audio"], dtype="float32")[0][:16000]) for r in rows])


def _vocoder(**kw):
    from tta_audioldm.vocoders import GriffinLim, LearnedGriffinLim

    return (LearnedGriffinLim if "channels" in kw else GriffinLim)(audio=AUDIO, **kw)


def test_the_nonnegative_inverse_keeps_the_mel_and_griffin_lim_comes_closer_to_the_clip(sets):
    waves = _clips(sets, "a")
    mel = log_mel(waves, AUDIO)
    fb = mel_filterbank(AUDIO)
    power = torch.exp(mel[:, 0]).transpose(1, 2)
    ours, pinv = _vocoder(), _vocoder(inverse="pinv")
    check_vocoder(ours, mel)
    magnitude = ours.mel_magnitude(mel)
    assert (magnitude >= 0).all()
    # its mel is the given one; the clipped pseudo-inverse's is not
    assert (torch.log(fb @ magnitude) - torch.log(power)).abs().mean() < 0.01
    assert (torch.log((fb @ pinv.mel_magnitude(mel)).clamp(min=1e-5)) - torch.log(power)).abs().mean() > 0.05

    def mel_l1(vocoder):
        return (log_mel(vocoder(mel), AUDIO) - mel).abs().mean()

    # measured on 64 held-out clips: 0.149 against 0.273 (and LSD 0.75 against 0.91)
    assert mel_l1(ours) < 0.75 * mel_l1(pinv)


def test_a_band_at_the_floor_is_only_pulled_down():
    t = torch.arange(16000) / 16000
    wave = torch.where(t < 0.5, 0.5 * torch.sin(2 * torch.pi * 440 * t), torch.zeros(()))[None]
    mel = log_mel(wave, AUDIO)
    floored = mel[0, 0] <= torch.log(torch.tensor(1e-5)) + 1e-3
    assert floored[-20:].all()  # the silent half is at the floor
    vocoder = _vocoder()
    quiet = torch.full((1, 513, mel.shape[2]), 1e-9)
    flat = vocoder.mel_magnitude(mel)
    below = vocoder.mel_magnitude(mel, start=quiet)
    fb = mel_filterbank(AUDIO)
    assert (fb @ flat)[0, :, -20:].max() <= 1e-5 * 1.01  # at most the floor
    assert below[0, :, -20:].max() < 1e-8  # a start under the floor stays under it
    tone = ~floored[:30].T  # the tone's bands, in the first half: those keep their level
    assert (torch.log(fb @ below)[0, :, :30][tone] - mel[0, 0, :30].T[tone]).abs().mean() < 0.01


def test_an_untrained_learned_griffin_lim_is_griffin_lim(sets):
    mel = log_mel(_clips(sets, "a", 2), AUDIO)
    torch.manual_seed(0)
    learned = _vocoder(channels=32, layers=2)
    check_vocoder(learned, mel)
    assert torch.equal(learned(mel), _vocoder(inverse_iter=learned.inverse_iter)(mel))
    # only the network's weights are state: the filterbank and its inverses are rebuilt from the recipe
    assert all(k.split(".")[0] in {"embed", "blocks", "norm", "head"} for k in learned.state_dict())


def test_bad_settings_are_refused_before_anything_is_written(sets, tmp_path, capsys):
    from tta_core.errors import UsageError

    with pytest.raises(UsageError, match="inverse must be one of nonnegative, pinv"):
        _vocoder(inverse="nnls")
    with pytest.raises(UsageError, match="kernel_size odd"):
        _vocoder(channels=8, kernel_size=4)
    data = f"data.train={{type: jsonl, manifest: {sets / 'a' / 'manifest.jsonl'}}}"
    for extra, said in ((["--set", "components.vocoder={type: griffin_lim}"], "type: learned_griffin_lim"),
                        (["--set", "components.vocoder={type: hifigan}"], "type: learned_griffin_lim"),
                        (["--set", "train.vocoder.duration=0.07"], "leave nothing"),
                        (["--set", "train.vocoder.objective.convergence_weight=-1"], "convergence_weight must be >= 0")):
        assert main([str(RECIPE), "train", "--run-dir", str(tmp_path / "bad"), "--no-progress", "--max-steps", "1",
                     "--set", data, *extra]) == 2, extra
        assert said in capsys.readouterr().err
        assert not (tmp_path / "bad" / "vocoder" / "checkpoints").exists()


@pytest.mark.slow
def test_the_trained_vocoder_beats_griffin_lim_on_held_out_clips(tmp_path):
    # 20 clips a label to train on, 4 a label held out (16 clips overfit: Griffin-Lim's LSD wins)
    for name, n, seed in (("train", 160, 0), ("valid", 32, 7)):
        assert main(["synth", "sounds", "--out", str(tmp_path / name), "--n", str(n), "--seed", str(seed),
                     "--duration", "1.28"]) == 0
    run = tmp_path / "run"
    sets_ = ["--set", f"data.train={{type: jsonl, manifest: {tmp_path / 'train' / 'manifest.jsonl'}}}",
             "--set", f"data.valid={{type: jsonl, manifest: {tmp_path / 'valid' / 'manifest.jsonl'}}}",
             "--set", "components.vocoder={type: learned_griffin_lim, channels: 96, layers: 2, inverse_iter: 10}"]
    assert main([str(RECIPE), "train", "--run-dir", str(run), "--no-progress", "--max-steps", "300",
                 "--set", "train.vocoder.log_every=10", *sets_]) == 0
    rows = [json.loads(x) for x in (run / "vocoder" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["log/log_l1"] for r in rows[-5:]) < 0.9 * sum(r["log/log_l1"] for r in rows[:5])
    assert main([str(RECIPE), "eval", "--reconstruction", "--run-dir", str(run), "--out", str(tmp_path / "rec"),
                 *sets_]) == 0
    report = json.loads((tmp_path / "rec" / "eval.json").read_text())
    ours, gl = report["vocoders"]["vocoder"], report["vocoders"]["griffin_lim"]
    # measured: mel L1 0.139 against 0.149, LSD 0.760 against 0.767
    assert ours["mel_l1"] < 0.97 * gl["mel_l1"] and ours["lsd"] < gl["lsd"], report["vocoders"]
    assert report["weights"]["vocoder"].endswith("step-00000300/vocoder.safetensors")
