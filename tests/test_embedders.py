"""The evaluation embedders (kind ``embedder``, plugin ``tta_eval``), offline and without
downloaded weights: the contract, shapes, determinism, settings() as cache keys, weights
files written here and loaded strictly, and the errors a user meets without weights."""

import copy
import hashlib
import json

import numpy as np
import pytest
import torch

from tta_core.data.mel import LogMel
from tta_core.errors import CheckpointError, UsageError
from tta_core.interfaces import Embedder, has_text, is_classifier
from tta_core.testing.conformance import check_embedder

from tta_eval.clap import ClapEmbedder
from tta_eval.mel_stats import AUDIO, MelStats
from tta_eval.panns import PANNs


def sine_and_noise(seconds: float, rate: int) -> torch.Tensor:
    """[2, N]: a 440 Hz tone and white noise at about the same level."""
    t = torch.arange(int(seconds * rate)) / rate
    noise = 0.3 * torch.randn(len(t), generator=torch.Generator().manual_seed(0))
    return torch.stack([0.4 * torch.sin(2 * torch.pi * 440.0 * t), noise])


def scaled(state: dict) -> dict:
    """"Trained" weights that differ from the seeded random ones everywhere: every float
    tensor times 1.05 (signs and positive variances kept)."""
    return {k: v * 1.05 if v.is_floating_point() else v for k, v in state.items()}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- mel_stats ---------------------------------------------------------------------------------


def test_mel_stats_frames_and_deltas_tell_a_sine_from_noise():
    embedder = MelStats()
    wave = sine_and_noise(1.0, 16000)
    check_embedder(embedder, wave)
    out = embedder.embed(wave)
    assert out.shape == (2, 100, 128) and out.dtype == torch.float32  # N // 160 frames, 64 mels + 64 deltas
    assert not is_classifier(embedder) and not has_text(embedder)
    # the first half is the project's log-mel, the second its deltas over 5 frames
    mel = LogMel(AUDIO)(wave)[:, 0]
    assert torch.allclose(out[..., :64], mel, atol=1e-6)
    # deltas: away from the reflect-padded edges, a steady tone's spectrum moves much less
    # from frame to frame than noise's
    assert out[0, 5:-5, 64:].abs().mean() < out[1, 5:-5, 64:].abs().mean() / 3
    # identical input, identical embedding; a sine and noise are far apart
    assert torch.equal(embedder.embed(wave[:1].clone()), out[:1])
    assert (out[0].mean(0) - out[1].mean(0)).norm() > 10
    assert embedder.settings()["weights"] == "none" and embedder.settings()["deltas"]["win_length"] == 5
    with pytest.raises(ValueError, match="at least 433 samples"):
        embedder.embed(torch.zeros(1, 400))
    with pytest.raises(ValueError, match=r"wave \[B, N\]"):
        embedder.embed(torch.zeros(16000))
    with pytest.raises(ValueError, match="odd number of frames"):
        MelStats(delta_win=4)


# -- panns -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panns():
    return PANNs(sample_rate=16000, random=True)


@pytest.fixture(scope="module")
def panns_file(panns, tmp_path_factory):
    """"Trained" Cnn14_16k weights as PANNs releases them: the state dict under "model", with
    the training iteration and the sampler's numpy state beside it."""
    trained = copy.deepcopy(panns)
    trained.net.load_state_dict(scaled(panns.net.state_dict()))
    path = tmp_path_factory.mktemp("panns") / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"iteration": 100000, "model": trained.net.state_dict(),
                "sampler": {"random_state": np.random.RandomState(0).get_state(), "pointers": np.arange(527)}}, path)
    return path, trained


def test_panns_conforms_clip_embedding_and_pre_sigmoid_logits(panns):
    wave = sine_and_noise(0.5, 16000)
    check_embedder(panns, wave)
    assert isinstance(panns, Embedder) and is_classifier(panns) and not has_text(panns)
    logits = panns.logits(wave)
    assert logits.shape == (2, 527) and panns.num_classes == 527
    # the embedding is PANNs' "embedding", the logits what its clipwise_output is the sigmoid of
    with torch.no_grad():
        out = panns.net({"waveform": wave})
    assert torch.allclose(torch.sigmoid(logits), out["clipwise_output"], atol=1e-6)
    assert not torch.allclose(out["embedding"][0], out["embedding"][1])
    # untrained weights say so, and how they were drawn
    assert json.loads(json.dumps(panns.settings()))["weights"].startswith("random (torch.manual_seed(0)")
    with pytest.raises(ValueError, match=r"at least 4960 samples \(0.310 s at 16000 Hz\)"):
        panns.embed(torch.zeros(1, 4000))
    with pytest.raises(Exception, match="eval mode"):
        panns.train()


def test_panns_variants_have_their_own_front_ends_and_settings(panns):
    other = PANNs(sample_rate=32000, random=True)
    assert other.sample_rate == 32000 and other.embed(sine_and_noise(0.5, 32000)).shape == (2, 1, 2048)
    s16, s32 = panns.settings(), other.settings()
    assert s16 != s32 and json.dumps(s16) != json.dumps(s32)
    assert (s16["variant"], s32["variant"]) == ("Cnn14_16k", "Cnn14")
    assert [s16["front_end"][k] for k in ("window_size", "hop_size", "mel_bins", "fmin", "fmax")] == [512, 160, 64, 50, 8000]
    assert [s32["front_end"][k] for k in ("window_size", "hop_size", "mel_bins", "fmin", "fmax")] == [1024, 320, 64, 50, 14000]
    with pytest.raises(ValueError, match="16000 .* or 32000"):
        PANNs(sample_rate=44100, random=True)


@pytest.mark.slow
def test_panns_loads_a_checkpoint_file_strictly_and_hashes_it(panns, panns_file):
    path, trained = panns_file
    loaded = PANNs(weights=str(path))
    wave = sine_and_noise(0.5, 16000)
    assert torch.equal(loaded.embed(wave), trained.embed(wave))
    assert torch.equal(loaded.logits(wave), trained.logits(wave))
    # the file's weights, not the seeded random ones
    assert not torch.equal(loaded.net.fc_audioset.weight, panns.net.fc_audioset.weight)
    settings = loaded.settings()
    assert settings["weights"] == {"file": str(path.resolve()), "sha256": sha256(path)}
    assert json.loads(json.dumps(settings)) == settings == loaded.settings()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.slow
def test_panns_refuses_a_file_with_a_misnamed_key_and_says_which(panns, tmp_path):
    state = dict(panns.net.state_dict())
    state["fc_audioset.weights"] = state.pop("fc_audioset.weight")
    path = tmp_path / "renamed.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        PANNs(weights=str(path))
    message = str(err.value)
    assert "missing: fc_audioset.weight" in message and "unexpected: fc_audioset.weights" in message
    assert "Cnn14_16k_mAP=0.438.pth" in message  # which file the variant expects


def test_panns_without_weights_says_where_to_get_them(tmp_path):
    with pytest.raises(CheckpointError, match=r"no weights file at .*nowhere.pth: download Cnn14_16k_mAP=0.438.pth "
                                              r".*zenodo.org/record/3987831.*never downloads"):
        PANNs(weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(CheckpointError, match=r"Cnn14_mAP=0.431.pth"):
        PANNs(sample_rate=32000, weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(UsageError, match="no weights: given.*random: true"):
        PANNs()
    with pytest.raises(UsageError, match="exclude each other"):
        PANNs(weights=str(tmp_path / "nowhere.pth"), random=True)


# -- clap --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clap():
    return ClapEmbedder(random=True, tmodel="transformer")


def test_clap_conforms_unit_audio_and_text_embeddings(clap):
    wave = sine_and_noise(0.25, 48000)
    # every clip costs a 10 s window at 48 kHz: the contract on one clip, the rest on two
    check_embedder(clap, wave[:1])
    assert isinstance(clap, Embedder) and has_text(clap) and not is_classifier(clap)
    audio, text = clap.embed(wave), clap.embed_text(["a dog barks", "rain"])
    assert audio.shape == (2, 1, 512) and text.shape == (2, 512) and clap.sample_rate == 48000
    assert torch.allclose(audio.norm(dim=-1), torch.ones(2, 1), atol=1e-5) and not torch.allclose(audio[0], audio[1])
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    settings = clap.settings()
    assert settings["model"] == {"amodel": "HTSAT-tiny", "tmodel": "transformer", "enable_fusion": False}
    assert settings["weights"].startswith("random") and "repeat" in settings["window"]


@pytest.mark.slow
def test_clap_loads_a_laion_clap_checkpoint_and_refuses_a_misnamed_key(clap, tmp_path):
    trained = scaled(clap.clap.model.state_dict())
    state = {"module." + k: v for k, v in trained.items()}  # as laion-clap's training saves them
    path = tmp_path / "630k-audioset-best.pt"
    torch.save({"epoch": 45, "state_dict": state}, path)
    loaded = ClapEmbedder(pretrained=str(path), tmodel="transformer")
    # every weight of both towers is the file's, so its outputs are the saved model's
    mine = loaded.clap.model.state_dict()
    assert mine.keys() == trained.keys() and all(torch.equal(mine[k], trained[k]) for k in mine)
    assert not torch.allclose(loaded.embed_text(["a dog barks"]), clap.embed_text(["a dog barks"]))
    assert loaded.settings()["weights"] == {"file": str(path.resolve()), "sha256": sha256(path)}

    state["module.logit_scale_audio"] = state.pop("module.logit_scale_a")
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing: logit_scale_a(.|\n)*unexpected: logit_scale_audio"):
        ClapEmbedder(pretrained=str(path), tmodel="transformer")


def test_clap_without_a_checkpoint_says_where_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match=r"no weights file at .*none.pt: download a laion-clap checkpoint "
                                              r"\(e.g. 630k-audioset-best.pt from https://huggingface.co/lukewys/laion_clap\)"):
        ClapEmbedder(pretrained=str(tmp_path / "none.pt"))
    with pytest.raises(UsageError, match="no pretrained: given"):
        ClapEmbedder(tmodel="transformer")


# -- registration ------------------------------------------------------------------------------


def test_tta_run_plugins_lists_the_three_embedders(capsys):
    from tta_core.cli import main

    assert main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    embedders = {row[1]: row for row in rows if row[:1] == ["embedder"]}
    assert set(embedders) >= {"mel_stats", "panns", "clap"}
    assert all(embedders[name][2] == "eval" and embedders[name][-1] == "ok" for name in ("mel_stats", "panns", "clap"))


def test_embedders_build_from_recipe_nodes():
    from tta_core.plugin import build_component

    embedder = build_component("embedder", {"type": "mel_stats", "delta_win": 7})
    assert isinstance(embedder, MelStats) and embedder.settings()["deltas"]["win_length"] == 7
