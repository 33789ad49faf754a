"""Audio-guided generation: SDEdit strength, inpainting and continuation, audio prompts,
loudness; on a tiny trained quickstart (mel autoencoder + vocoder) and a tiny trained birds
run (diffusion autoencoder on the waveform)."""

import json
from pathlib import Path

import pytest
import soundfile
import torch

from tta_core.cli import main


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tiny_run):
    from tta_core.sampling import load_pipeline

    args, root = tiny_run
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    pipe = load_pipeline(REPO / "recipes/quickstart.yaml", run_dir=root / "run", device="cpu", overrides=overrides)
    return pipe, args, root


@pytest.fixture(scope="module")
def init_clip(sets):
    return sorted((sets / "a").rglob("*.wav"))[1]  # a 1 s synthetic clip


def _mel(pipe, wave):
    from tta_core.data.mel import log_mel

    return log_mel(wave.float().reshape(-1, wave.shape[-1]), pipe.audio)[:, 0]


def _reconstruction(pipe, path):
    """What the trained autoencoder and vocoder make of the clip, with no diffusion."""
    wave = pipe._load(path)
    with torch.no_grad():
        return pipe.vocoder(pipe.autoencoder.decode(pipe.autoencoder.encode(_mel(pipe, wave)[:, None])))[0]


def test_strength_0_is_the_reconstruction_and_1_ignores_the_init(quick, init_clip):
    pipe, _, _ = quick
    opts = dict(steps=6, seed=3, guidance=2.0, init_audio=init_clip)
    zero, rate = pipe.generate("a rising chirp", strength=0.0, **opts)
    assert zero.shape == (1, 16000)  # as long as the init clip (1 s)
    expected = _reconstruction(pipe, init_clip)[:16000]
    assert torch.allclose(zero[0], expected, atol=1e-5)
    one, _ = pipe.generate("a rising chirp", strength=1.0, **opts)
    plain, _ = pipe.generate("a rising chirp", steps=6, seed=3, guidance=2.0, duration=1.0)
    assert torch.equal(one, plain)  # the same seed without an init: the init leaves no trace
    half, _ = pipe.generate("a rising chirp", strength=0.5, **opts)
    target = _mel(pipe, expected)

    def dist(w):
        return float((_mel(pipe, w[0]) - target).abs().mean())

    assert dist(zero) < 1e-4 < dist(half) < dist(one)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_every_sampler_takes_an_init(quick, init_clip, sampler):
    pipe, _, _ = quick
    opts = dict(steps=6, seed=1, sampler=sampler, init_audio=init_clip)
    varied, _ = pipe.generate("white noise", strength=0.4, **opts)
    one, _ = pipe.generate("white noise", strength=1.0, **opts)
    plain, _ = pipe.generate("white noise", steps=6, seed=1, sampler=sampler, duration=1.0)
    assert torch.isfinite(varied).all() and not torch.equal(varied, plain) and torch.equal(one, plain)


def _corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_inpainting_keeps_the_kept_span_and_continuation_extends(quick, init_clip, monkeypatch):
    pipe, _, _ = quick
    original = pipe._load(init_clip)  # 1 s
    latents = []
    decode = pipe.autoencoder.decode
    monkeypatch.setattr(pipe.autoencoder, "decode", lambda z, **kw: latents.append(z.clone()) or decode(z, **kw))
    out, _ = pipe.generate("a clock ticking", steps=6, seed=2, guidance=2.0, init_audio=init_clip, keep="0:0.5")
    # in the latent: the kept half is exactly the clip's own latent, the rest generated
    with torch.no_grad():
        z0 = pipe.autoencoder.encode(_mel(pipe, original)[:, None])
    half = z0.shape[2] // 2
    assert torch.equal(latents[0][:, :, :half], z0[:, :, :half])
    assert (latents[0][:, :, half + 2:] - z0[:, :, half + 2:]).abs().mean() > 0.1
    # in the audio: the kept span is the original (faded out over its last 20 ms), the rest is not
    assert _corr(out[0, :7600], original[:7600]) > 0.999
    assert abs(_corr(out[0, 8400:], original[8400:])) < 0.5
    longer, _ = pipe.generate("a clock ticking", steps=6, seed=2, init_audio=init_clip, extend=0.5)
    assert longer.shape == (1, 24000)  # 1 s kept, 0.5 s more
    assert _corr(longer[0, :15600], original[:15600]) > 0.999 and longer[0, 16400:].abs().max() > 0


def test_the_cli_writes_the_edit_into_the_manifest(quick, init_clip, tmp_path):
    _, args, _ = quick
    out = tmp_path / "out"
    assert main(["recipes/quickstart.yaml", "sample", "--text", "a falling chirp", "--init-audio", str(init_clip),
                 "--strength", "0.5", "--keep", "0:0.25", "--steps", "4", "--out", str(out), *args]) == 0
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["init_audio"] == str(init_clip) and row["strength"] == 0.5 and row["keep"] == [[0.0, 0.25]]
    assert row["duration"] == pytest.approx(1.0)
    assert main(["recipes/quickstart.yaml", "sample", "--text", "x", "--strength", "0.5", "--out", str(out), *args]) == 2
    assert main(["recipes/quickstart.yaml", "sample", "--text", "x", "--init-audio", str(init_clip),
                 "--strength", "1.5", "--out", str(out), *args]) == 2


def test_audio_prompts_are_refused_without_an_audio_side(quick, init_clip, tmp_path, capsys):
    _, args, _ = quick
    assert main(["recipes/quickstart.yaml", "sample", "--audio-prompt", str(init_clip), "--out", str(tmp_path),
                 *args]) == 2
    assert "has no audio side" in capsys.readouterr().err


def test_audio_prompts_condition_on_the_clips_embedding(quick, init_clip, sets, monkeypatch):
    """A conditioner with an audio side (CLAP's contract: encode_audio(wave [B, N], rate))."""
    pipe, _, _ = quick
    from tta_core.interfaces import Conditioning

    seen = []

    def encode_audio(wave, sample_rate):
        seen.append((tuple(wave.shape), sample_rate))
        # a text prompt chosen by the clip's loudness: the audio decides the conditioning
        return pipe.conditioner.encode_text(["a rising chirp" if wave.abs().mean() > 0.05 else "white noise"])

    monkeypatch.setattr(pipe.conditioner, "encode_audio", encode_audio, raising=False)
    other = sorted((sets / "a").rglob("*.wav"))[2]
    a, _ = pipe.generate(audio_prompt=init_clip, steps=4, seed=0, guidance=3.0, duration=0.5)
    b, _ = pipe.generate(audio_prompt=other, steps=4, seed=0, guidance=3.0, duration=0.5)
    assert seen[0] == ((1, 16000), 16000)
    texts = [pipe.generate(t, steps=4, seed=0, guidance=3.0, duration=0.5)[0] for t in ("a rising chirp", "white noise")]
    assert any(torch.equal(a, t) for t in texts) and any(torch.equal(b, t) for t in texts)
    assert isinstance(pipe.conditioner.encode_audio(torch.zeros(1, 10), 16000), Conditioning)


def test_loudness_reaches_the_target(quick, tmp_path):
    pyloudnorm = pytest.importorskip("pyloudnorm")
    _, args, _ = quick
    out = tmp_path / "out"
    assert main(["recipes/quickstart.yaml", "sample", "--text", "white noise", "--text", "a low steady hum",
                 "--loudness", "-20", "--duration", "1.0", "--steps", "4", "--format", "float",
                 "--out", str(out), *args]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        wave, rate = soundfile.read(out / row["file"])
        measured = pyloudnorm.Meter(rate).integrated_loudness(wave)
        assert row["loudness"]["target_lufs"] == -20
        if not row["loudness"].get("peak_limited"):
            assert abs(measured - -20) <= 0.5


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    from tta_core.sampling import load_pipeline

    root = tmp_path_factory.mktemp("birds")
    assert main(["synth", "birds", "--out", str(root / "birds"), "--n", "8", "--seed", "0"]) == 0
    sets_ = [f"data.train.manifest={root / 'birds/manifest.jsonl'}", "train.diffae.batch_size=4",
             "train.diffgen.batch_size=4", "components.ae.decode_steps=2"]
    common = [x for s in sets_ for x in ("--set", s)] + ["--run-dir", str(root / "run")]
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert main(["recipes/diffae_birds_tiny.yaml", "train", "--max-steps", "1", "--no-progress", *common]) == 0
    finally:
        os.chdir(cwd)
    pipe = load_pipeline(REPO / "recipes/diffae_birds_tiny.yaml", run_dir=root / "run", device="cpu", overrides=sets_)
    return pipe, sorted((root / "birds").rglob("*.wav"))[0]


def test_a_diffusion_autoencoder_varies_through_its_encoder(birds):
    pipe, clip = birds
    opts = dict(steps=3, seed=4, guidance=2.0, init_audio=clip, decode_steps=2)
    one, _ = pipe.generate("a silver warbler trilling", strength=1.0, **opts)
    n = one.shape[-1]
    plain, _ = pipe.generate("a silver warbler trilling", steps=3, seed=4, guidance=2.0, decode_steps=2,
                             duration=n / pipe.sample_rate)
    assert torch.equal(one, plain)
    zero, _ = pipe.generate("a silver warbler trilling", strength=0.0, **opts)
    # strength 0: the clip's latent decoded, with the noise the generator then gives the decoder
    from tta_core.data.audio import with_channels

    wave = pipe._load(clip)[None]
    with torch.no_grad():
        latent = pipe.autoencoder.encode(with_channels(wave))
        g = torch.Generator().manual_seed(4)
        torch.randn((1, *pipe.autoencoder.latent_shape(wave.shape[-1])), generator=g)
        expected = pipe.autoencoder.decode(latent, steps=2, generator=g)[..., :n]
    assert torch.allclose(zero, expected.reshape(zero.shape), atol=1e-5)
