"""``random_weights: true``: the network a pretrained source names, at its real size, with
random weights, built without the hub and without reading anything but the files a test wrote."""

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

#: What the code under watch opens and whom it calls on the network (an audit hook cannot be
#: removed: it only records while ``_WATCH["on"]`` is set).
_WATCH: dict = {"on": False, "opened": [], "network": []}


def _audit(event: str, args: tuple) -> None:
    if not _WATCH["on"]:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _WATCH["opened"].append(os.fsdecode(args[0]))
    elif event.startswith("socket.") and event != "socket.__new__":
        _WATCH["network"].append(event)


sys.addaudithook(_audit)
tempfile.gettempdir()  # its first call probes the folder with a scratch file: not a read of anything given


@contextlib.contextmanager
def offline_reads(allowed: Path | None = None):
    """Fails if the block opens a file other than installed code and package data (the virtual
    environment, the project's own modules and metadata, the kernel's /proc and /sys) and what the test
    wrote under ``allowed``, asks the hub's functions for a file, or touches the network."""
    import huggingface_hub.file_download
    import transformers.utils.hub

    asked = []
    patched = [(module, name, getattr(module, name)) for module, name in (
        (transformers.utils.hub, "cached_files"), (transformers.utils.hub, "hf_hub_download"),
        (huggingface_hub.file_download, "hf_hub_download"), (huggingface_hub, "hf_hub_download"))]
    for module, name, original in patched:
        def record(*args, _name=name, _original=original, **kwargs):
            asked.append((_name, args[:2]))
            return _original(*args, **kwargs)
        setattr(module, name, record)
    _WATCH.update(on=True, opened=[], network=[])
    try:
        yield
    finally:
        _WATCH["on"] = False
        for module, name, original in patched:
            setattr(module, name, original)
    assert not asked, f"asked the hub: {asked}"
    roots = [sys.prefix, sys.base_prefix, "/proc/", "/sys/", "/dev/", *([str(allowed)] if allowed else [])]
    own_code = [p for p in _WATCH["opened"] if p.startswith(str(REPO)) and p.endswith((".py", ".pyc"))
                or p.startswith(str(REPO / "tta.egg-info"))]  # the installed project's own metadata
    foreign = [p for p in _WATCH["opened"] if p not in own_code and not p.startswith(tuple(roots))]
    assert not foreign, f"read files it was not given: {foreign}"
    assert not _WATCH["network"], f"touched the network: {_WATCH['network']}"


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- t5 ------------------------------------------------------------------------------------------


def test_t5_builds_a_hub_model_at_its_real_size_without_the_hub():
    from transformers import T5Config, T5EncoderModel

    from tta_audioldm.t5 import T5Conditioner

    with offline_reads():
        t5 = T5Conditioner(pretrained="t5-small", random_weights=True)
        cond = t5.encode_text(["a dog barks", ""])
    # t5-small as its model card publishes it
    reference = T5EncoderModel(T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_heads=8,
                                        num_layers=6, feed_forward_proj="relu"))
    assert count(t5) == count(reference) == 35_330_816
    assert t5.encoder.get_input_embeddings().weight.shape == (32128, 512)
    assert cond.tokens.shape[0] == 2 and cond.tokens.shape[-1] == t5.width == 512


def test_t5_takes_the_architecture_from_a_local_folder_without_tokenizer_or_weights(tmp_path):
    from transformers import T5Config, T5EncoderModel

    from tta_audioldm.t5 import T5Conditioner

    folder = tmp_path / "my-t5"
    folder.mkdir()
    config = dict(vocab_size=1000, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=3,
                  feed_forward_proj="gated-gelu", model_type="t5")
    (folder / "config.json").write_text(json.dumps(config))
    with offline_reads(allowed=tmp_path):
        t5 = T5Conditioner(pretrained=str(folder), random_weights=True)
        t5.encode_text(["rain on a roof"])
    assert count(t5) == count(T5EncoderModel(T5Config(**config)))
    assert t5.width == 32 and t5.encoder.config.num_layers == 3


def test_a_local_copy_not_yet_downloaded_builds_the_model_it_is_named_after():
    from tta_audioldm.t5 import T5Conditioner

    with offline_reads():
        t5 = T5Conditioner(pretrained="checkpoints/google-t5/t5-small/", random_weights=True)
    assert count(t5) == 35_330_816


@pytest.mark.slow
def test_t5_base_encoder_has_its_published_size():
    from tta_audioldm.t5 import T5Conditioner

    with offline_reads():
        t5 = T5Conditioner(pretrained="t5-base", random_weights=True)
        flan = T5Conditioner(pretrained="google/flan-t5-large", random_weights=True)
    assert round(count(t5) / 1e6, 1) == 109.6  # shared embedding included
    assert flan.width == 1024 and flan.encoder.config.feed_forward_proj == "gated-gelu"
    assert round(count(flan) / 1e6, 1) == 341.2


def test_an_unknown_hub_id_or_a_folder_without_config_is_refused_saying_what_would_do(tmp_path):
    from tta_audioldm.t5 import T5Conditioner

    with pytest.raises(ValueError) as err, offline_reads():
        T5Conditioner(pretrained="someone/t5-huge", random_weights=True)
    message = str(err.value)
    assert "google/flan-t5-large" in message and "t5-base" in message and "local folder" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        T5Conditioner(pretrained=str(tmp_path / "empty"), random_weights=True)


# -- clip ----------------------------------------------------------------------------------------


def _clip_reference(hidden: int, layers: int, heads: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=heads,
                                        max_position_embeddings=77))


def test_clip_builds_the_text_tower_of_a_hub_model_at_its_real_size():
    from tta_audioldm.clip_text import CLIPTextConditioner

    with offline_reads():
        clip = CLIPTextConditioner(pretrained="openai/clip-vit-base-patch32", random_weights=True)
        cond = clip.encode_text(["a cat meows"])
    assert count(clip) == count(_clip_reference(512, 12, 8))
    assert cond.tokens.shape == (1, 77, 512) and cond.pooled.shape == (1, 512)
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())  # frozen, as pretrained


@pytest.mark.slow
def test_clip_vit_large_text_tower_has_its_published_size():
    from tta_audioldm.clip_text import CLIPTextConditioner

    with offline_reads():
        clip = CLIPTextConditioner(pretrained="openai/clip-vit-large-patch14", random_weights=True)
    assert count(clip) == count(_clip_reference(768, 12, 12)) == 123_060_480


def test_clip_reads_a_whole_clip_config_from_a_local_folder(tmp_path):
    from tta_audioldm.clip_text import CLIPTextConditioner

    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "text_config": text,
                                                      "vision_config": {"hidden_size": 32}}))
    with offline_reads(allowed=tmp_path):
        clip = CLIPTextConditioner(pretrained=str(tmp_path), random_weights=True, projection=True)
    assert clip.width == 64 and clip.model.config.num_hidden_layers == 2
    assert clip.model.get_input_embeddings().weight.shape == (49408, 64)


# -- clap_text -----------------------------------------------------------------------------------


def test_clap_text_builds_from_a_pipelines_text_encoder_config(tmp_path):
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    from tta_audioldm.clap_text import ClapTextConditioner

    folder = tmp_path / "text_encoder"
    folder.mkdir()
    config = dict(vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=514, type_vocab_size=1, projection_dim=24)
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["ClapTextModelWithProjection"]}))
    with offline_reads(allowed=tmp_path):
        clap = ClapTextConditioner(pretrained=str(folder), random_weights=True)
        pooled = clap.encode_text(["birdsong at dawn", ""]).pooled
    assert count(clap) == count(ClapTextModelWithProjection(ClapTextConfig(**config)))
    assert pooled.shape == (2, 24) and torch.allclose(pooled.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.slow
def test_clap_text_of_audioldm_has_its_published_size():
    from tta_audioldm.clap_text import ClapTextConditioner

    with offline_reads():
        clap = ClapTextConditioner(pretrained="cvssp/audioldm-s-full-v2/text_encoder", random_weights=True)
    assert clap.width == 512 and round(count(clap) / 1e6, 1) == 125.3


# -- hifigan -------------------------------------------------------------------------------------


def test_hifigan_named_after_an_audioldm_pipeline_is_audioldms_vocoder():
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from tta_audioldm.vocoders import HiFiGAN

    with offline_reads():
        vocoder = HiFiGAN(pretrained="checkpoints/audioldm-s-full-v2/vocoder", random_weights=True)
        wave = vocoder(torch.randn(1, 1, 10, 64))
    # AudioLDM's vocoder/config.json: 16 kHz, 64 mel bands, 160x upsampling
    published = SpeechT5HifiGanConfig(model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
                                      upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                                      resblock_kernel_sizes=[3, 7, 11],
                                      resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    assert count(vocoder) == count(SpeechT5HifiGan(published))
    assert (vocoder.sample_rate, vocoder.hop_length) == (16000, 160) and wave.shape == (1, 1600)
    with pytest.raises(ValueError, match="cvssp/audioldm-s-full-v2"):
        HiFiGAN(pretrained="checkpoints/bigvgan/vocoder", random_weights=True)


# -- clap (laion-clap) ---------------------------------------------------------------------------


@pytest.mark.slow
def test_laion_clap_with_roberta_builds_without_its_checkpoint_or_tokenizer_files(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    from tta_audioldm.clap import CLAPConditioner, clap_module

    import librosa
    import librosa.util.utils  # noqa: F401  (numba-compiled helpers, cached on import)

    # laion-clap's import and librosa's first mel filterbank compile numba code into numba's
    # cache: done before the watch, which is for what is read of models and tokenizers
    clap_module()
    librosa.filters.mel(sr=48000, n_fft=1024, n_mels=64, fmin=50, fmax=14000)
    missing = tmp_path / "630k-audioset-best.pt"  # named, never read
    with offline_reads(allowed=tmp_path):
        clap = CLAPConditioner(pretrained=str(missing), tmodel="roberta", amodel="HTSAT-tiny", random_weights=True)
        pooled = clap.encode_text(["a dog barks", "thunder"]).pooled
    roberta_base = RobertaModel(RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                              num_attention_heads=12, intermediate_size=3072,
                                              max_position_embeddings=514, type_vocab_size=1))
    assert count(clap.model.text_branch) == count(roberta_base)
    assert pooled.shape == (2, 512) and torch.allclose(pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not missing.exists()
