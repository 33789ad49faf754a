"""The real-size recipes (AudioLDM with FLAN-T5, AudioLDM 1 with CLAP, Amphion's TTA): each
validates as shipped, and runs end to end through the CLI on a tiny synthetic set once `--set`
shrinks every model and swaps each pretrained part for a tiny local one written here (nothing
is downloaded): one VAE step, one LDM step, then a two-step sample."""

import json
from pathlib import Path

import pytest

from tta_core.checkpoint import latest_checkpoint
from tta_core.cli import main

from tta_audioldm.clap import CLAPConditioner

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("audioldm_t5", "audioldm_clap", "amphion_tta")

#: every model at toy size; what differs per recipe is in _parts()
TINY = [
    "audio.duration=0.64",
    "components.vae.channels=[8,16]", "components.vae.norm_groups=4", "components.vae.layers_per_block=1",
    "components.vae.mid_attention=false",
    "components.unet.channels=[16,32]", "components.unet.attention_levels=[false,true]",
    "components.unet.layers_per_block=1", "components.unet.norm_groups=8", "components.unet.head_dim=8",
    "components.vocoder={type: griffin_lim, n_iter: 2}",
    "train.vae.batch_size=4", "train.ldm.batch_size=2", "train.vae.precision=fp32", "train.ldm.precision=fp32",
]


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipe_validates(name, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([f"recipes/{name}.yaml", "validate"]) == 0


@pytest.fixture(scope="module")
def sounds(tmp_path_factory):
    out = tmp_path_factory.mktemp("sounds")
    assert main(["synth", "sounds", "--out", str(out), "--n", "16", "--seed", "0", "--duration", "1.0"]) == 0
    return out / "manifest.jsonl"


def _parts(name, request):
    if name == "audioldm_clap":  # the checkpoint laion-clap style; its own text tower needs no download
        return [f"components.text.pretrained={request.getfixturevalue('tiny_clap')}",
                "components.text.tmodel=transformer"]
    return [f"components.text={{type: t5, pretrained: {request.getfixturevalue('tiny_t5')}, max_length: 16}}",
            "components.unet.cross_attention_dim=16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipe_trains_each_stage_and_samples_when_tiny(name, sounds, tmp_path, monkeypatch, request):
    monkeypatch.chdir(REPO)
    calls = {"encode_audio": 0, "encode_text": 0}
    for method in calls:  # watch which side of CLAP each step uses
        original = getattr(CLAPConditioner, method)

        def spy(self, *args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(CLAPConditioner, method, spy)
    sets = [f"data.train={{type: jsonl, manifest: {sounds}}}", *TINY, *_parts(name, request)]
    common = [x for s in sets for x in ("--set", s)] + ["--run-dir", str(tmp_path / "run"), "--no-progress"]

    # every call the spies count is a training step's (no trial steps of the memory check)
    assert main([f"recipes/{name}.yaml", "train", "--max-steps", "1", "--skip-memory-check", *common]) == 0
    for stage, component in (("vae", "vae"), ("ldm", "unet")):
        ckpt = latest_checkpoint(tmp_path / "run" / stage / "checkpoints")
        assert ckpt is not None and ckpt.step == 1 and ckpt.has_weights(component)
    if name == "audioldm_clap":  # trained on the clips' CLAP audio embeddings, not on captions
        assert calls["encode_audio"] == 1
    trained_on = dict(calls)

    out = tmp_path / "out"
    assert main([f"recipes/{name}.yaml", "sample", "--text", "a rising chirp", "--steps", "2", "--out", str(out),
                 *common]) == 0
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["prompt"] == "a rising chirp" and (out / row["file"]).exists()
    if name == "audioldm_clap":  # sampled from the prompt's CLAP text embedding (and null's)
        assert calls["encode_audio"] == trained_on["encode_audio"] and calls["encode_text"] > trained_on["encode_text"]
