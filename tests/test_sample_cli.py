"""`tta-run RECIPE sample` and the Python sampling API, end to end on tiny toy components."""

import json

import pytest
import soundfile
import torch

from tta_core.checkpoint import save_checkpoint
from tta_core.cli import main

TOY_PLUGIN = """
import torch
from tta_core.interfaces import Conditioning
from tta_core.plugin import hookimpl


class ToyText(torch.nn.Module):
    def __init__(self, width: int = 8, pretrained: str | None = None):
        super().__init__()
        self.embed = torch.nn.Embedding(256, width)
        self.null_vec = torch.nn.Parameter(torch.zeros(1, 1, width))

    def encode_text(self, texts):
        ids = [torch.tensor(list(t.encode()[:16]) or [0]) for t in texts]
        length = max(len(i) for i in ids)
        tokens = torch.stack([torch.nn.functional.pad(i, (0, length - len(i))) for i in ids])
        mask = torch.stack([torch.arange(length) < len(i) for i in ids])
        emb = self.embed(tokens.to(self.embed.weight.device))
        mask = mask.to(emb.device)
        pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return Conditioning(tokens=emb, mask=mask, pooled=pooled)

    def null(self, batch):
        tokens = self.null_vec.expand(batch, 1, -1)
        return Conditioning(tokens=tokens, mask=torch.ones(batch, 1, dtype=torch.bool, device=tokens.device),
                            pooled=tokens[:, 0])


class ToyUnet(torch.nn.Module):
    def __init__(self, channels: int = 4, width: int = 8):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.film = torch.nn.Linear(width, channels)
        self.time = torch.nn.Linear(1, channels)

    def forward(self, x, t, cond):
        h = self.conv(x) + self.film(cond.pooled)[:, :, None, None] + self.time(t[:, None] / 1000)[:, :, None, None]
        return 0.5 * x + 0.1 * torch.tanh(h)


class ToyVae(torch.nn.Module):
    domain = "mel"

    def __init__(self, n_mels: int = 8):
        super().__init__()
        self.n_mels = n_mels
        self.enc = torch.nn.Conv2d(1, 4, 2, stride=2)
        self.dec = torch.nn.ConvTranspose2d(4, 1, 2, stride=2)

    def latent_shape(self, n):
        if n % 2:
            raise ValueError("frames must be even")
        return (4, n // 2, self.n_mels // 2)

    def encode(self, mel):
        return self.enc(mel)

    def decode(self, latent):
        return self.dec(latent)


class ToyWaveAE:
    # a parameter-free waveform autoencoder (DiffAE's place): 64 samples per latent frame

    domain = "waveform"

    def latent_shape(self, n):
        return (4, -(-n // 64), 2)

    def encode(self, wave):
        raise NotImplementedError

    def decode(self, latent):
        return torch.tanh(latent.flatten(1)).repeat_interleave(8, dim=1)[:, None]


class ToyVocoder:
    sample_rate = 8000
    hop_length = 80

    def __call__(self, mel):
        envelope = torch.tanh(mel.mean(-1)[:, 0]).repeat_interleave(self.hop_length, dim=1)
        phase = torch.arange(envelope.shape[1], device=mel.device) * (2 * torch.pi * 440 / self.sample_rate)
        return 0.5 * envelope * torch.sin(phase)


def toy_objective():
    return None


@hookimpl
def tta_register(register):
    register("conditioner", "toy_text", ToyText)
    register("denoiser", "toy_unet", ToyUnet)
    register("autoencoder", "toy_vae", ToyVae)
    register("vocoder", "toy_vocoder", ToyVocoder)
    register("autoencoder", "toy_wave_ae", ToyWaveAE)
    register("objective", "toy_objective", toy_objective)
"""

RECIPE = """
name: toy
audio: {sample_rate: 8000, duration: 0.25, mel: {n_fft: 256, hop: 80, win: 256, n_mels: 8, fmax: 4000}}
components:
  text: {type: toy_text}
  unet: {type: toy_unet}
  vae: {type: toy_vae}
  process: {type: vp_discrete, betas: scaled_linear, beta_start: 0.0015, beta_end: 0.0195,
            steps_offset: 1, set_alpha_to_one: false}
  vocoder: {type: toy_vocoder}
train:
  - {name: vae, objective: {type: toy_objective}, trains: [vae]}
  - {name: ldm, objective: {type: toy_objective}, trains: [unet, text], frozen: [vae]}
sample: {sampler: {type: ddim}, steps: 4, guidance: 3.0}
"""


def _weights(module_name, seed):
    torch.manual_seed(seed)
    return _modules()[module_name]().state_dict()


def _modules():
    import sys

    mod = sys.modules["tta_toy_toy"]
    return {"text": mod.ToyText, "unet": mod.ToyUnet, "vae": mod.ToyVae}


@pytest.fixture
def toy(tmp_path, fake_dists):
    """A recipe of toy components, and a run dir with trained (random, fixed) weights."""
    fake_dists("tta-toy", "0.1", {"toy": TOY_PLUGIN})
    import importlib

    importlib.import_module("tta_toy_toy")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"

    def train(stage="both"):
        if stage in ("both", "vae"):
            save_checkpoint(run / "vae" / "checkpoints", 3, weights={"vae": _weights("vae", 1)})
        if stage in ("both", "ldm"):
            save_checkpoint(run / "ldm" / "checkpoints", 7, weights={
                "unet": _weights("unet", 2), "unet.ema": _weights("unet", 3),
                "text": _weights("text", 4), "text.ema": _weights("text", 5)})

    return recipe, run, train


def _sample(recipe, run, out, *extra):
    return main([str(recipe), "sample", "--run-dir", str(run), "--out", str(out), "--no-progress", *extra])


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_sample_writes_audio_spectrograms_and_manifest(toy, tmp_path):
    recipe, run, train = toy
    train()
    out = tmp_path / "out"
    assert _sample(recipe, run, out, "--text", "a dog barks", "--text", "rain", "--n", "2", "--seed", "3") == 0
    rows = _manifest(out)
    assert [r["prompt"] for r in rows] == ["a dog barks", "a dog barks", "rain", "rain"]
    assert len({r["file"] for r in rows}) == 4
    for row in rows:
        info = soundfile.info(str(out / row["file"]))
        assert info.samplerate == 8000 and info.subtype == "PCM_16"
        assert info.frames == 2000  # 0.25 s, trimmed from the 26 frames * 80 the decoder gives
        assert (out / row["spectrogram"]).read_bytes()[:4] == b"\x89PNG"
        assert row["negative"] == "" and row["seed"] == 3 and row["steps"] == 4 and row["guidance"] == 3.0
        assert row["sampler"] == {"type": "ddim"} and row["duration"] == 0.25 and row["sample_rate"] == 8000
        assert row["checkpoint"].endswith("ldm/checkpoints/step-00000007")
        assert row["weights"]["unet"].endswith("unet.ema.safetensors")
        assert row["weights"]["vocoder"] == "none"  # no parameters, no checkpoint needed
    wave, _ = soundfile.read(str(out / rows[0]["file"]))
    assert abs(wave).max() > 0.01  # not silence


def test_same_seed_same_bytes_other_seed_other_audio(toy, tmp_path):
    recipe, run, train = toy
    train()
    args = ["--text", "a dog barks", "--sampler", "ddpm"]
    assert _sample(recipe, run, tmp_path / "a", *args, "--seed", "5") == 0
    assert _sample(recipe, run, tmp_path / "b", *args, "--seed", "5") == 0
    assert _sample(recipe, run, tmp_path / "c", *args, "--seed", "6") == 0
    (name,) = [r["file"] for r in _manifest(tmp_path / "a")]
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_no_trained_weights_names_the_stage_to_train(toy, tmp_path, capsys):
    recipe, run, train = toy
    assert _sample(recipe, run, tmp_path / "out", "--text", "x") == 1
    err = capsys.readouterr().err
    assert "refusing to sample from untrained weights" in err
    assert f"tta-run {recipe} train --stage vae" in err and f"tta-run {recipe} train --stage ldm" in err
    assert not (tmp_path / "out").exists()
    train("vae")
    assert _sample(recipe, run, tmp_path / "out", "--text", "x") == 1
    err = capsys.readouterr().err
    assert "--stage ldm" in err and "--stage vae" not in err


def test_a_component_flagged_pretrained_needs_no_checkpoint(toy, tmp_path, capsys):
    recipe, run, train = toy
    train("vae")
    save_checkpoint(run / "ldm" / "checkpoints", 2, weights={"unet": _weights("unet", 2)})
    assert _sample(recipe, run, tmp_path / "out", "--text", "x") == 1
    err = capsys.readouterr().err
    assert "'text' has no trained weights" in err and "'unet'" not in err
    assert _sample(recipe, run, tmp_path / "out", "--text", "x", "--set", "components.text.pretrained=toy-t5") == 0
    assert _manifest(tmp_path / "out")[0]["weights"]["text"] == "pretrained"


def test_prompt_file_names_outputs_and_formats(toy, tmp_path):
    recipe, run, train = toy
    train()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Y123.wav\ta cat meows\n\nthunder far away\n")
    out = tmp_path / "out"
    assert _sample(recipe, run, out, "--prompts", str(prompts), "--format", "float", "--duration", "0.1") == 0
    rows = _manifest(out)
    assert rows[0]["file"] == "Y123.wav" and rows[0]["prompt"] == "a cat meows"
    assert rows[1]["prompt"] == "thunder far away" and rows[1]["file"].endswith(".wav")
    info = soundfile.info(str(out / "Y123.wav"))
    assert info.subtype == "FLOAT" and info.frames == 800
    assert _sample(recipe, run, out, "--text", "birds", "--format", "flac") == 0
    flac = [r for r in _manifest(out) if r["prompt"] == "birds"]
    assert flac[0]["file"].endswith(".flac") and soundfile.info(str(out / flac[0]["file"])).format == "FLAC"
    assert len(_manifest(out)) == 3  # earlier lines kept


def test_ema_by_default_raw_with_no_ema_and_explicit_ckpt(toy, tmp_path):
    recipe, run, train = toy
    train()
    assert _sample(recipe, run, tmp_path / "ema", "--text", "wind") == 0
    assert _sample(recipe, run, tmp_path / "raw", "--text", "wind", "--no-ema") == 0
    ema, raw = _manifest(tmp_path / "ema")[0], _manifest(tmp_path / "raw")[0]
    assert raw["weights"]["unet"].endswith("/unet.safetensors")
    assert (tmp_path / "ema" / ema["file"]).read_bytes() != (tmp_path / "raw" / raw["file"]).read_bytes()
    # --ckpt takes the components it holds from that folder
    other = save_checkpoint(tmp_path / "elsewhere", 1, weights={"unet": _weights("unet", 9)})
    assert _sample(recipe, run, tmp_path / "ck", "--text", "wind", "--ckpt", str(other)) == 0
    row = _manifest(tmp_path / "ck")[0]
    assert row["weights"]["unet"] == str(other / "unet.safetensors")
    assert row["weights"]["text"].endswith("ldm/checkpoints/step-00000007/text.ema.safetensors")


def test_python_api_negative_prompt_and_batching(toy):
    from tta_core.sampling import load_pipeline

    recipe, run, train = toy
    train()
    pipe = load_pipeline(recipe, run_dir=run, device="cpu")
    waves, rate = pipe.generate(["a dog barks", "rain"], n=2, seed=1, steps=3, guidance=3.0)
    assert rate == 8000 and waves.shape == (4, 2000)
    # batch size changes which noise an item gets, not whether it is reproducible
    again, _ = pipe.generate(["a dog barks", "rain"], n=2, seed=1, steps=3, guidance=3.0)
    assert torch.equal(waves, again)
    base, _ = pipe.generate(["a dog barks"], seed=1, steps=3, guidance=3.0)
    empty, _ = pipe.generate(["a dog barks"], seed=1, steps=3, guidance=3.0, negative="")
    negative, _ = pipe.generate(["a dog barks"], seed=1, steps=3, guidance=3.0, negative="loud static")
    assert torch.equal(base, empty)
    assert not torch.allclose(base, negative, atol=1e-4)
    # without guidance a negative prompt has nothing to replace
    plain, _ = pipe.generate(["a dog barks"], seed=1, steps=3, guidance=1.0)
    plain_neg, _ = pipe.generate(["a dog barks"], seed=1, steps=3, guidance=1.0, negative="loud static")
    assert torch.equal(plain, plain_neg) and not torch.allclose(plain, base, atol=1e-4)
    # the denoiser under bf16 autocast: the same graph, close to fp32
    bf16, _ = load_pipeline(recipe, run_dir=run, device="cpu", precision="bf16").generate(
        ["a dog barks"], seed=1, steps=3, guidance=3.0)
    assert bf16.shape == base.shape and (bf16 - base).abs().max() < 0.1


def test_recipe_validation_rejects_unknown_sample_keys(toy, tmp_path, capsys):
    recipe, run, train = toy
    train()
    assert main([str(recipe), "sample", "--run-dir", str(run), "--text", "x",
                 "--set", "sample.guidance_intervall=[0.1, 0.5]"]) == 2
    assert "did you mean 'guidance_interval'" in capsys.readouterr().err
    assert _sample(recipe, run, tmp_path / "o", "--text", "x", "--set", "sample.guidance_interval=[0.2, 0.8]",
                   "--set", "sample.guidance_rescale=0.7") == 0
    row = _manifest(tmp_path / "o")[0]
    assert row["guidance_interval"] == [0.2, 0.8] and row["guidance_rescale"] == 0.7


def test_waveform_autoencoder_with_v_diffusion_needs_no_vocoder(toy):
    """The Mousai-shaped graph: a waveform autoencoder, v-diffusion, the v sampler."""
    from tta_core.sampling import load_pipeline

    recipe, run, train = toy
    train("ldm")
    pipe = load_pipeline(recipe, run_dir=run, device="cpu", overrides=[
        "components.vae.type=toy_wave_ae", "components.process={type: v_diffusion}",
        "sample.sampler={type: vsampler}"])
    assert pipe.vocoder is None and pipe.weights["vae"].source == "none"
    waves, rate = pipe.generate("a bird sings", seed=0, steps=4, guidance=2.0, duration=0.2)
    assert rate == 8000 and waves.shape == (1, 1600) and waves.abs().max() > 0.01
