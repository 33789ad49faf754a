"""The ``clap`` conditioner (laion-clap; AudioLDM 1's conditioning), offline with random
weights: the contract, the audio side, laion-clap checkpoints, and tokenizers that are missing."""

import argparse

import pytest
import torch

from tta_core.errors import CheckpointError, TtaError
from tta_core.testing.conformance import check_conditioner

from tta_audioldm.clap import CLAPConditioner, clap_module
from test_audioldm import _word_tokenizer


@pytest.fixture(scope="module")
def clap():
    # laion-clap's own text tower: its CLIP BPE vocabulary ships with the package
    torch.manual_seed(0)
    return CLAPConditioner(tmodel="transformer", amodel="HTSAT-tiny")


def tones(seconds: float, rate: int, freqs=(440.0, 2500.0)) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    noise = torch.randn(len(freqs), len(t), generator=torch.Generator().manual_seed(1))
    return torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) for f in freqs]) + 0.01 * noise


def save_laion_checkpoint(conditioner: CLAPConditioner, path) -> None:
    """As laion-clap's training writes them: DataParallel names under "state_dict", with an epoch."""
    torch.save({"epoch": 45, "state_dict": {"module." + k: v for k, v in conditioner.model.state_dict().items()}},
               path)


def test_clap_conforms_and_embeds_text_and_audio_as_unit_vectors(clap):
    wave = tones(1.0, 16000)
    check_conditioner(clap, audio=wave, sample_rate=16000)
    with torch.no_grad():
        text = clap.encode_text(["a dog barks", ""]).pooled
        audio = clap.encode_audio(wave, 16000).pooled
        null = clap.null(3).pooled
    for x in (text, audio):
        assert x.shape == (2, 512) and torch.allclose(x.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(audio[0], audio[1], atol=1e-4)
    # null: the text embedding of "" for every item, as AudioLDM's unconditional input
    assert torch.allclose(null, text[1:].repeat(3, 1), atol=1e-5)
    # frozen by default
    assert not clap.training and not any(p.requires_grad for p in clap.parameters())


def test_clap_fits_audio_to_its_ten_second_window_as_laion_clap(clap):
    # what the audio tower sees, at CLAP's own 48 kHz (the rest of encode_audio is deterministic)
    one = tones(1.0, 48000, freqs=(440.0,))
    window = clap._fit(one)
    assert window.shape == (1, 480000) and torch.equal(window, one.repeat(1, 10))
    # a shorter clip is repeated whole as often as it fits, then zero-padded ("repeatpad")
    three = tones(3.0, 48000, freqs=(440.0,))
    assert torch.equal(clap._fit(three), torch.cat([three.repeat(1, 3), torch.zeros(1, 48000)], dim=1))
    # a longer one is cropped to its central 10 s
    ten = tones(10.0, 48000, freqs=(700.0,))
    assert torch.equal(clap._fit(torch.cat([torch.randn(1, 48000), ten, torch.randn(1, 48000)], dim=1)), ten)


@pytest.mark.slow
def test_clap_loads_a_laion_clap_checkpoint_through_pretrained(clap, tmp_path):
    path = tmp_path / "630k-audioset-best.pt"
    save_laion_checkpoint(clap, path)
    torch.manual_seed(123)  # other random weights, replaced by the checkpoint's
    loaded = CLAPConditioner(pretrained=str(path), tmodel="transformer")
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(["a dog barks"]).pooled, clap.encode_text(["a dog barks"]).pooled)
    # every weight of both towers: the audio embeddings are the same too
    mine, theirs = loaded.state_dict(), clap.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.slow
def test_clap_refuses_checkpoints_that_do_not_fit_and_changes_nothing(clap, tmp_path):
    with torch.no_grad():
        before = clap.encode_text(["rain"]).pooled
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing.pt: download a laion-clap checkpoint"):
        clap.load_pretrained(str(tmp_path / "missing.pt"))

    state = {"module." + k: v for k, v in clap.model.state_dict().items()}
    del state["module.text_projection.0.weight"]
    state["module.logit_scale_t"] = torch.ones(3)
    state["module.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as err:
        clap.load_pretrained(str(tmp_path / "other.pt"))
    text = str(err.value)
    assert "missing: text_projection.0.weight" in text and "unexpected: extra.weight" in text
    assert "shape: logit_scale_t: model (), file (3,)" in text
    assert "Do amodel (HTSAT-tiny), tmodel (transformer) and enable_fusion (False) match the checkpoint?" in text

    torch.save({"epoch": 3, "name": "run"}, tmp_path / "no_weights.pt")
    with pytest.raises(CheckpointError, match="holds no CLAP state dict"):
        clap.load_pretrained(str(tmp_path / "no_weights.pt"))
    # a file that needs Python objects to unpickle is refused, not run
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        clap.load_pretrained(str(tmp_path / "pickled.pt"))
    with torch.no_grad():
        assert torch.equal(clap.encode_text(["rain"]).pooled, before)


def test_clap_refuses_a_nearly_empty_roberta_tokenizer_naming_the_missing_files(tmp_path):
    # what transformers hands back offline for roberta-base when its files are not cached
    _word_tokenizer(tmp_path / "roberta", words=2)
    with pytest.raises(TtaError, match=r"clap: the tokenizer loaded from .*roberta has only \d+ tokens: its "
                                       r"vocabulary files are missing \(expected vocab.json \+ merges.txt") as err:
        CLAPConditioner(tmodel="roberta", tokenizer=str(tmp_path / "roberta"))
    assert "found: ['tokenizer.json', 'tokenizer_config.json']" in str(err.value)
    with pytest.raises(ValueError, match="tokenizer: is for tmodel: roberta"):
        CLAPConditioner(tmodel="transformer", tokenizer=str(tmp_path / "roberta"))
    with pytest.raises(ValueError, match="unknown amodel 'HTSAT-tin' \\(did you mean 'HTSAT-tiny'\\?\\)"):
        CLAPConditioner(tmodel="transformer", amodel="HTSAT-tin")


@pytest.mark.slow
def test_clap_roberta_builds_offline_from_its_configuration(tmp_path):
    # only the tokenizer files are needed: the RoBERTa network is built from roberta-base's
    # configuration (its weights come from a CLAP checkpoint), nothing is downloaded
    _word_tokenizer(tmp_path / "roberta", words=150)
    saved = clap_module().model.RobertaModel
    torch.manual_seed(0)
    clap = CLAPConditioner(tmodel="roberta", tokenizer=str(tmp_path / "roberta"))
    assert clap_module().model.RobertaModel is saved  # laion-clap's module is left as it was
    assert clap.model.text_branch.config.hidden_size == 768 and clap.model.text_branch.config.num_hidden_layers == 12
    with torch.no_grad():
        out = clap.encode_text(["w1 w2 w3", "w4"]).pooled
        alone = clap.encode_text(["w4"]).pooled
    assert out.shape == (2, 512) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out[1:], alone, atol=1e-5)  # padded to 77 tokens and masked: batch-independent


def test_clap_fusion_model_takes_short_and_long_clips(tmp_path):
    torch.manual_seed(0)
    fused = CLAPConditioner(tmodel="transformer", enable_fusion=True)
    with torch.no_grad():
        for seconds in (1.0, 10.5):  # four copies of one mel / the shrunk mel and three windows
            out = fused.encode_audio(tones(seconds, 16000)[:1], 16000).pooled
            assert out.shape == (1, 512) and torch.isfinite(out).all()
            assert torch.allclose(out.norm(dim=-1), torch.ones(1), atol=1e-5)
