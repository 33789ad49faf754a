"""The sampling package from Python and from the commands: a recipe must name its sampler,
errors name options as Python arguments or as flags depending on who asked, and
`eval --adherence` writes its clips exactly as `sample` does."""

import hashlib
import json
from pathlib import Path

import pytest

from tta_core.cli import main
from test_sample_cli import RECIPE, _manifest, _sample, toy  # noqa: F401  (the toy recipe and run dir)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LINE = "sample: {sampler: {type: ddim}, steps: 4, guidance: 3.0}"


def _files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_recipe_without_a_sampler_is_refused_naming_the_recipe_key_and_the_flag(toy, tmp_path, capsys):
    from tta_core.sampling import SettingError, load_pipeline

    recipe, run, train = toy
    train()
    assert SAMPLE_LINE in RECIPE
    recipe.write_text(RECIPE.replace(SAMPLE_LINE, "sample: {steps: 4, guidance: 3.0}"))
    out = tmp_path / "out"
    assert _sample(recipe, run, out, "--text", "rain") == 2
    err = capsys.readouterr().err
    assert "no sampler" in err and "sample.sampler" in err and "give --sampler" in err
    assert "ddim" in err and "ddpm" in err  # the registered samplers, from the registry
    assert not out.exists()
    # with --sampler it samples; from Python the message names the argument
    assert _sample(recipe, run, out, "--text", "rain", "--sampler", "ddpm") == 0
    assert _manifest(out)[0]["sampler"] == {"type": "ddpm"}
    pipe = load_pipeline(recipe, run_dir=run, device="cpu")
    with pytest.raises(SettingError, match="give sampler;") as caught:
        pipe.generate("rain")
    assert "--" not in str(caught.value)
    waves, _ = pipe.generate("rain", sampler="ddim", steps=2)
    assert waves.shape == (1, 2000)


def test_errors_name_python_arguments_from_python_and_flags_from_the_command(toy, tmp_path, capsys, monkeypatch):
    import tta_core.memory
    from tta_core.sampling import SettingError, load_pipeline

    recipe, run, train = toy
    train()
    pipe = load_pipeline(recipe, run_dir=run, device="cpu")
    with pytest.raises(SettingError) as caught:
        pipe.settings(strength=0.5)
    assert str(caught.value) == "strength, keep and extend act on an init clip: give init_audio (an audio file)"
    assert _sample(recipe, run, tmp_path / "out", "--text", "x", "--strength", "0.5") == 2
    assert "error: --strength, --keep and --extend act on an init clip: give --init-audio" in capsys.readouterr().err

    monkeypatch.setattr(tta_core.memory, "available_bytes", lambda device: 1_000_000)  # 1 MB free
    with pytest.raises(SettingError) as caught:
        list(pipe.batches(["rain"], duration=30.0, memory_check=True))
    assert "lower duration or batch_size, or run it anyway with memory_check=False" in str(caught.value)
    assert _sample(recipe, run, tmp_path / "out", "--text", "x", "--duration", "30") == 2
    assert "lower --duration or --batch-size, or run it anyway with --skip-memory-check" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_memory_estimate_is_kept_with_the_run_and_made_again_only_for_another_graph_or_shape(toy, monkeypatch):
    import json

    import tta_core.sampling.estimate as E
    from tta_core.sampling import load_pipeline

    recipe, run, train = toy
    train()
    pipe = load_pipeline(recipe, run_dir=run, device="cpu")
    first = pipe.memory_needed(pipe.settings(duration=0.25), 1)
    kept = json.loads((run / "cache" / E.ESTIMATES_FILE).read_text())
    assert first > 0 and list(kept.values()) == [first]

    calls = []
    monkeypatch.setattr(E, "_estimate", lambda pipe, st, b: calls.append(st.duration) or 12345)
    again = load_pipeline(recipe, run_dir=run, device="cpu")  # another process would load it so
    assert again.memory_needed(again.settings(duration=0.25), 1) == first and calls == []
    assert again.memory_needed(again.settings(duration=0.5), 1) == 12345 and calls == [0.5]
    assert again.memory_needed(again.settings(duration=0.25, guidance=1), 1) == 12345 and len(calls) == 2
    other = load_pipeline(recipe, run_dir=run, device="cpu", overrides=["components.process.beta_end=0.02"])
    assert other.memory_needed(other.settings(duration=0.25), 1) == 12345 and len(calls) == 3
    # a damaged file is estimated again and rewritten
    (run / "cache" / E.ESTIMATES_FILE).write_text("{not json")
    assert again.memory_needed(again.settings(duration=0.25), 1) == 12345
    assert len(json.loads((run / "cache" / E.ESTIMATES_FILE).read_text())) == 1


@pytest.fixture
def labelled(toy, tmp_path):  # noqa: F811
    """The toy recipe and run, with a small labelled training set (8 kinds of sound)."""
    recipe, run, train = toy
    train()
    assert main(["synth", "sounds", "--out", str(tmp_path / "sounds"), "--n", "16", "--seed", "0",
                 "--duration", "0.5"]) == 0
    sets = ["--set", f"data.train={{type: jsonl, manifest: {tmp_path / 'sounds/manifest.jsonl'}}}"]
    return recipe, run, sets


def _adherence(recipe, run, sets, out, *extra):
    return main([str(recipe), "eval", "--adherence", "--run-dir", str(run), "--n-per-label", "1",
                 "--reference-per-label", "2", "--steps", "2", "--out", str(out), *sets, *extra])


@pytest.mark.slow
def test_eval_adherence_writes_clips_as_sample_does_and_replaces_its_own(labelled, tmp_path, capsys):
    recipe, run, sets = labelled
    out = tmp_path / "adh"
    assert _adherence(recipe, run, sets, out, "--seed", "1") == 0
    assert "wrote 8 file(s) to" in capsys.readouterr().out
    rows = _manifest(out)
    labels = {"low_hum", "high_beep", "rising_chirp", "falling_chirp", "noise", "ticking", "pluck", "buzz"}
    assert {r["file"] for r in rows} == {f"{label}-0.wav" for label in labels}
    for row in rows:  # the manifest line `sample` writes, with the recipe's sampler and eval's settings
        assert row["sampler"] == {"type": "ddim"} and row["steps"] == 2 and row["seed"] == 1
        assert row["sample_rate"] == 8000 and row["recipe"] == "toy" and row["ema"] is True
        assert (out / row["spectrogram"]).read_bytes()[:4] == b"\x89PNG"
    first = _files(out)
    report = json.loads((out / "eval.json").read_text())["adherence"]
    assert report["n"] == 8
    # a second evaluation replaces its clips under the same names (no -1, -2) and appends to the manifest
    assert _adherence(recipe, run, sets, out, "--seed", "2") == 0
    second = _files(out)
    assert set(second) == set(first)
    assert all(second[name] != first[name] for name in first if name.endswith(".wav"))
    rows = _manifest(out)
    assert len(rows) == 16 and [r["seed"] for r in rows] == [1] * 8 + [2] * 8


def test_eval_adherence_generates_with_the_sampler_it_is_given(labelled, tmp_path, capsys):
    recipe, run, sets = labelled
    out = tmp_path / "adh"
    assert _adherence(recipe, run, sets, out, "--sampler", "ddpm", "--labels", "noise,buzz") == 0
    assert {r["sampler"]["type"] for r in _manifest(out)} == {"ddpm"}
    assert _adherence(recipe, run, sets, tmp_path / "other", "--sampler", "no_such_sampler") == 2
    err = capsys.readouterr().err
    assert "no_such_sampler" in err and "ddim" in err
    assert not (tmp_path / "other").exists()


def test_weights_load_into_networks_built_empty_and_sample_as_before(tiny_run, monkeypatch):
    """load_pipeline builds networks whose weights come from a file without initialising them
    (placeholders that take the file's tensors): nothing is left a placeholder, the weights
    are the file's, and the audio is the audio of a pipeline built the usual way."""
    import contextlib

    import torch

    import tta_core.sampling.pipeline as P
    from tta_core.checkpoint import load_weights
    from tta_core.sampling import load_pipeline

    args, root = tiny_run
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    recipe, run = REPO / "recipes" / "quickstart.yaml", root / "run"
    pipe = load_pipeline(recipe, run_dir=run, device="cpu", overrides=overrides)
    assert {"unet", "text", "vae"} <= set(pipe.components)  # diffusers' U-Net and VAE, transformers' T5
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert not any(t.is_meta for t in [*component.parameters(), *component.buffers()]), name
    denoiser = pipe.weights[pipe.roles["denoiser"]]
    file = load_weights(denoiser.path)
    assert all(torch.equal(v, file[k]) for k, v in pipe.denoiser.state_dict().items())
    waves, _ = pipe.generate("rain", steps=3, seed=4)

    monkeypatch.setattr(P, "empty_parameters", contextlib.nullcontext)  # built and initialised, then loaded
    usual = load_pipeline(recipe, run_dir=run, device="cpu", overrides=overrides)
    for name, component in usual.components.items():
        if isinstance(component, torch.nn.Module):
            ours = pipe.components[name].state_dict()
            assert all(torch.equal(v, ours[k]) for k, v in component.state_dict().items()), name
    torch.testing.assert_close(usual.generate("rain", steps=3, seed=4)[0], waves, atol=0, rtol=0)


def test_eval_adherence_refuses_what_sample_refuses_before_any_model_loads(labelled, tmp_path, capsys, monkeypatch):
    import tta_core.memory
    import tta_core.sampling

    recipe, run, sets = labelled
    dataset = tmp_path / "sounds"
    before = _files(dataset)
    assert _adherence(recipe, run, sets, dataset) == 2  # a dataset's manifest: not sample's
    assert "not written by `tta-run sample`" in capsys.readouterr().err
    assert _files(dataset) == before

    monkeypatch.setattr(tta_core.memory, "available_bytes", lambda device: 1_000_000)  # 1 MB free
    out = tmp_path / "adh"
    assert _adherence(recipe, run, sets, out, "--set", "sample.duration=30") == 2
    err = capsys.readouterr().err
    assert "lower sample.duration (--set) or sample.batch_size (--set), or run it anyway with --skip-memory-check" \
        in err
    assert not out.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the bad --out was refused")

    monkeypatch.setattr(tta_core.sampling, "load_pipeline", refuse)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert _adherence(recipe, run, sets, a_file) == 2
    assert f"--out {a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "mine"
