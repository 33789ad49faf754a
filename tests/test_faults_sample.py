"""Fault matrix, sampling and recipe settings: bad input is refused before any model loads,
earlier outputs and foreign files are never changed, and nothing non-finite is written.

Each test asserts the exit code, the message, and that every file that existed before is
byte-for-byte intact (``_snapshot``)."""

import hashlib
import json
import math

import pytest

from tta_core.cli import main
from tta_core.manifest import append_rows, latest_rows, read_rows
from test_sample_cli import _manifest, _sample, toy  # noqa: F401  (the toy recipe and run dir)


def _snapshot(*folders):
    """path -> sha256 of every file under ``folders``."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders if folder.exists() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if the sample graph is built: a refusal must come before any model loads."""
    import tta_core.sampling

    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the bad input was refused")

    monkeypatch.setattr(tta_core.sampling, "load_pipeline", refuse)


# -- outputs are never overwritten --------------------------------------------------------------


def test_two_samples_into_one_folder_keep_the_first_outputs(toy, tmp_path, capsys):
    recipe, run, train = toy
    train()
    out = tmp_path / "out"
    assert _sample(recipe, run, out, "--text", "a dog barks", "--n", "2", "--seed", "1") == 0
    before, manifest_before = _snapshot(out), (out / "manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert _sample(recipe, run, out, "--text", "a dog barks", "--n", "2", "--seed", "2") == 0
    assert "2 named -1, -2" in capsys.readouterr().out
    after = _snapshot(out)
    assert {k: after[k] for k in before if not k.endswith("manifest.jsonl")} == \
        {k: v for k, v in before.items() if not k.endswith("manifest.jsonl")}
    manifest = (out / "manifest.jsonl").read_bytes()
    assert manifest.startswith(manifest_before)  # appended to, never rewritten
    rows = _manifest(out)
    assert [r["seed"] for r in rows] == [1, 1, 2, 2]
    assert len({r["file"] for r in rows}) == 4
    assert all((out / r["file"]).exists() and (out / r["spectrogram"]).exists() for r in rows)
    assert [r["file"] for r in rows[2:]] == ["000_a_dog_barks_0-1.wav", "000_a_dog_barks_1-1.wav"]


def test_overwrite_replaces_and_the_manifest_keeps_every_line(toy, tmp_path):
    recipe, run, train = toy
    train()
    out = tmp_path / "out"
    assert _sample(recipe, run, out, "--text", "rain", "--seed", "1") == 0
    first = _snapshot(out)
    manifest_before = (out / "manifest.jsonl").read_bytes()
    assert _sample(recipe, run, out, "--text", "rain", "--seed", "2", "--overwrite") == 0
    wav = str(out / "000_rain.wav")
    assert _snapshot(out)[wav] != first[wav]
    assert (out / "manifest.jsonl").read_bytes().startswith(manifest_before)
    rows = read_rows(out / "manifest.jsonl")
    assert len(rows) == 2
    assert [(r["file"], r["seed"]) for r in latest_rows(rows)] == [("000_rain.wav", 2)]


@pytest.mark.parametrize("content", [
    '{"audio": "audio/0001.wav", "caption": "a dog barks", "label": "dog"}\n',  # a dataset's manifest
    '{"file": "x.wav", "prompt": "p", "seed": 0, "sample_rate": 8000, "recipe": "toy"}\n{"file": "y.w',  # cut
])
def test_a_foreign_or_malformed_manifest_in_out_is_refused_untouched(toy, tmp_path, capsys, no_models, content):
    recipe, run, _ = toy
    data = tmp_path / "dataset"
    (data / "audio").mkdir(parents=True)
    (data / "manifest.jsonl").write_text(content)
    (data / "audio" / "0001.wav").write_bytes(b"RIFF....")
    before = _snapshot(data)
    assert _sample(recipe, run, data, "--text", "a dog barks") == 2
    err = capsys.readouterr().err
    assert "manifest.jsonl:" in err and "not written by `tta-run sample`" in err and "left as it is" in err
    assert _snapshot(data) == before
    assert sorted(p.name for p in data.iterdir()) == ["audio", "manifest.jsonl"]


# -- settings checked before any model loads ------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--guidance", "nan"], "argument --guidance: expected a finite number, got 'nan'"),
    (["--guidance", "inf"], "argument --guidance: expected a finite number, got 'inf'"),
    (["--steps", "0"], "argument --steps: must be at least 1, got integer 0"),
    (["--duration", "0"], "argument --duration: must be greater than 0, got number 0.0"),
    (["--duration", "-1"], "argument --duration: must be greater than 0"),
    (["--n", "0"], "argument --n/--n-per-prompt: must be at least 1"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["--strength", "1.5"], "argument --strength: must be at most 1"),
    (["--guidance-rescale", "-0.1"], "argument --guidance-rescale: must be at least 0"),
    (["--loudness", "5"], "argument --loudness: must be at most 0"),
    (["--seed", "x"], "argument --seed: expected an integer, got 'x'"),
    (["--guidance-interval", "2", "1"], "--guidance-interval LO HI needs LO <= HI"),
    (["--duration", "0.01"], "--duration 0.01 s is too short"),
])
def test_bad_sampling_settings_are_refused_before_any_model_loads(toy, tmp_path, capsys, no_models, flags, message):
    recipe, run, train = toy
    train()
    before = _snapshot(tmp_path)
    assert _sample(recipe, run, tmp_path / "out", "--text", "a dog barks", *flags) == 2
    assert message in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


def test_paths_are_checked_before_any_model_loads(toy, tmp_path, capsys, no_models):
    recipe, run, train = toy
    train()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    before = _snapshot(tmp_path)
    cases = [
        (["--out", str(a_file)], f"--out {a_file} is a file, not a folder"),
        (["--out", str(a_file / "sub")], "is a file, so the folder cannot be made"),
        (["--out", "/proc/tta-no-such-folder"], "cannot be written"),
        (["--run-dir", str(a_file)], f"--run-dir {a_file} is a file"),
        (["--ckpt", str(tmp_path / "nope")], "does not exist: it names a checkpoint folder"),
        (["--init-audio", str(tmp_path), "--strength", "0.5"], "is a folder: give an audio file"),
    ]
    for flags, message in cases:
        args = [str(recipe), "sample", "--run-dir", str(run), "--out", str(tmp_path / "out"),
                "--text", "x", "--no-progress", *flags]
        assert main(args) == 2, flags
        assert message in capsys.readouterr().err, flags
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


# -- non-finite audio ----------------------------------------------------------------------------

NAN_VOCODER = """
import torch
from tta_core.plugin import hookimpl


class NanVocoder:
    sample_rate = 8000
    hop_length = 80

    def __call__(self, mel):
        wave = torch.zeros(mel.shape[0], mel.shape[2] * self.hop_length)
        return wave / wave  # 0 / 0: NaN everywhere


@hookimpl
def tta_register(register):
    register("vocoder", "nan_vocoder", NanVocoder)
"""


def test_non_finite_audio_fails_naming_the_prompt_and_writes_nothing(toy, tmp_path, capsys, fake_dists):
    recipe, run, train = toy
    train()
    fake_dists("tta-nanvoc", "0.1", {"nanvoc": NAN_VOCODER})
    out = tmp_path / "out"
    code = _sample(recipe, run, out, "--text", "a dog barks", "--set", "components.vocoder.type=nan_vocoder")
    err = capsys.readouterr().err
    assert code == 1
    assert "not finite" in err and "'a dog barks'" in err and "nothing of that batch was written" in err
    assert not out.exists() or not any(out.iterdir())


def test_the_manifest_never_holds_invalid_json(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_rows(path, [{"file": "a.wav", "prompt": "p", "seed": 0, "sample_rate": 8000, "recipe": "r"}])
    before = path.read_bytes()
    with pytest.raises(ValueError):
        append_rows(path, [{"file": "b.wav", "guidance": math.nan}])
    assert path.read_bytes() == before
    assert [json.loads(line)["file"] for line in path.read_text().splitlines()] == ["a.wav"]


# -- recipe settings: range-checked by the validator, with file:line ----------------------------

STAGE = "  - {name: ldm, objective: {type: toy_objective}, trains: [unet, text], frozen: [vae], %s}\n"


@pytest.mark.parametrize("setting, message", [
    ("checkpoint_every: 0", "'train.ldm.checkpoint_every': must be at least 1, got integer 0"),
    ("batch_size: 0", "'train.ldm.batch_size': must be at least 1, got integer 0"),
    ("grad_accum: 0", "'train.ldm.grad_accum': must be at least 1"),
    ("max_steps: -5", "'train.ldm.max_steps': must be at least 0, got integer -5"),
    ("log_every: 0", "'train.ldm.log_every': must be at least 1"),
    ("keep_last: 0", "'train.ldm.keep_last': must be at least 1"),
    ("duration: 0", "'train.ldm.duration': must be greater than 0"),
    ("grad_clip: -1", "'train.ldm.grad_clip': must be greater than 0, got integer -1"),
    ("optimizer: {lr: -1.0e-4}", "'train.ldm.optimizer.lr': must be greater than 0"),
    ("optimizer: {lr: .nan}", "'train.ldm.optimizer.lr': expected a finite number, got number nan"),
    ("optimizers: {unet: {lr: 0}}", "'train.ldm.optimizers.unet.lr': must be greater than 0"),
    ("ema: {beta: 1.5}", "'train.ldm.ema.beta': must be at most 1"),
    ("lr_schedule: {warmup_steps: -1}", "'train.ldm.lr_schedule.warmup_steps': must be at least 0"),
])
def test_numeric_stage_settings_are_range_checked_with_file_and_line(toy, tmp_path, capsys, setting, message):
    recipe, _, _ = toy
    text = recipe.read_text()
    lines = text.splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if "name: ldm" in line)
    lines[n] = STAGE % setting
    bad = tmp_path / "bad.yaml"
    bad.write_text("".join(lines))
    before = _snapshot(tmp_path)
    assert main([str(bad), "validate"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert f"{bad}:{n + 1}" in err  # the stage's line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("override, message", [
    ("sample.guidance=.nan", "'sample.guidance': expected a finite number"),
    ("sample.guidance=.inf", "'sample.guidance': expected a finite number"),
    ("sample.steps=0", "'sample.steps': must be at least 1"),
    ("sample.guidance_rescale=2", "'sample.guidance_rescale': must be at most 1"),
    ("audio.duration=0", "'audio.duration': must be greater than 0"),
    ("audio.mel.hop=0", "'audio.mel.hop': must be at least 1"),
])
def test_recipe_sampling_and_audio_settings_are_range_checked(toy, capsys, override, message):
    recipe, _, _ = toy
    assert main([str(recipe), "validate", "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_cli_numbers_for_train_and_eval_are_checked_as_they_are_read(toy, capsys):
    recipe, _, _ = toy
    for args, message in [
        (["eval", "--adherence", "--n-per-label", "0"], "argument --n-per-label: must be at least 1"),
        (["eval", "--adherence", "--min-accuracy", "nan"], "argument --min-accuracy: expected a finite number"),
    ]:
        assert main([str(recipe), *args]) == 2
        assert message in capsys.readouterr().err


def test_sampling_off_a_terminal_reports_progress_as_plain_lines(toy, tmp_path, capsys):
    recipe, run, train = toy
    train()
    args = [str(recipe), "sample", "--run-dir", str(run), "--out", str(tmp_path / "out"), "--text", "rain",
            "--n", "3", "--batch-size", "2"]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sample batch")]
    assert lines[0] == "sample batch 1/2: 0/4 steps (0%)"
    assert lines[1].startswith("sample batch 1/2: 4/4 steps (100%)") and "done in" in lines[1]
    assert lines[-1].startswith("sample batch 2/2: 4/4 steps (100%)")
    assert not any("\r" in line for line in lines)


RANGED_PLUGIN = """
from typing import Annotated

from tta_core.plugin import Range, hookimpl


class Ranged:
    def __init__(self, steps: Annotated[int, Range(min=1)] = 10, eta: Annotated[float, Range(0, 1)] = 0.0):
        self.steps, self.eta = steps, eta

    def __call__(self, denoise, x, schedule, *, generator=None, callback=None):
        return x


@hookimpl
def tta_register(register):
    register("sampler", "ranged", Ranged)
"""


def test_a_plugin_factory_declares_ranges_that_the_validator_checks(toy, tmp_path, capsys, fake_dists):
    recipe, _, _ = toy
    fake_dists("tta-ranged", "0.1", {"ranged": RANGED_PLUGIN})
    assert main([str(recipe), "validate", "--set", "sample.sampler={type: ranged, steps: 3, eta: 0.5}"]) == 0
    capsys.readouterr()
    assert main([str(recipe), "validate", "--set", "sample.sampler={type: ranged, steps: 0, eta: 2}"]) == 2
    err = capsys.readouterr().err
    assert "'sample.sampler.steps': must be at least 1, got integer 0" in err
    assert "'sample.sampler.eta': must be at most 1, got integer 2" in err


def test_a_generation_estimated_beyond_free_memory_is_refused_with_the_estimate(toy, tmp_path, capsys, monkeypatch):
    import tta_core.memory

    recipe, run, train = toy
    train()
    out = tmp_path / "out"
    monkeypatch.setattr(tta_core.memory, "available_bytes", lambda device: 10_000_000)  # 10 MB free
    assert _sample(recipe, run, out, "--text", "rain", "--duration", "1") == 0  # a small generation fits
    before = _snapshot(out)
    capsys.readouterr()
    assert _sample(recipe, run, out, "--text", "rain", "--duration", "60", "--batch-size", "4", "--n", "4") == 2
    err = capsys.readouterr().err
    assert "a batch of 4 output(s) of 60 s needs about" in err and "cpu memory has 10 MB free" in err
    assert "lower --duration or --batch-size, or run it anyway with --skip-memory-check" in err
    assert _snapshot(out) == before
    # the estimate follows the length of the output
    assert _sample(recipe, run, out, "--text", "rain", "--duration", "120", "--batch-size", "4", "--n", "4") == 2
    need = {60: err, 120: capsys.readouterr().err}
    mb = {k: float(v.split("needs about ")[1].split(" MB at its peak")[0]) for k, v in need.items()}
    assert 1.8 < mb[120] / mb[60] < 2.2
    assert _sample(recipe, run, out, "--text", "rain", "--duration", "2", "--skip-memory-check") == 0


def test_train_numbers_on_the_command_line_are_checked_as_they_are_read(toy, tmp_path, capsys):
    recipe, run, _ = toy
    for flags, message in [(["--max-steps", "-5"], "argument --max-steps: must be at least 0, got integer -5"),
                           (["--max-steps", "x"], "argument --max-steps: expected an integer, got 'x'"),
                           (["--seed", "-1"], "argument --seed: must be at least 0")]:
        assert main([str(recipe), "train", "--run-dir", str(run), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not run.exists()
