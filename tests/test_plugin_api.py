"""The plugin API is the whole API: built-in plugins and examples import only
``tta_core.plugin`` and ``tta_core.testing``; ``tta_core.plugin`` imports light and every
name it exports resolves; the objective and importer CONTRIBUTING.md shows run as written."""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = ("tta_core.plugin", "tta_core.testing")
_SKIP_PARTS = {".venv", "venv", "build", "dist", "__pycache__"}


def _allowed(module: str) -> bool:
    return module in ALLOWED or module.startswith("tta_core.testing.")


def _python_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(p in _SKIP_PARTS or p.endswith(".egg-info") for p in parts):
            yield path


def _imported_modules(node: ast.AST) -> list[str]:
    """The tta_core modules an import statement reaches (``from tta_core import x`` reaches
    ``tta_core.x``); relative imports stay inside their own package and reach none."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "tta_core":
            return [f"tta_core.{a.name}" for a in node.names]
        return [node.module]
    return []


def forbidden_imports(*roots: Path) -> list[str]:
    """``file:line: module`` for every import of tta_core other than the plugin API, at any
    depth (inside functions and methods too)."""
    found = []
    for root in roots:
        for path in _python_files(root):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                for module in _imported_modules(node):
                    if (module == "tta_core" or module.startswith("tta_core.")) and not _allowed(module):
                        where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                        found.append(f"{where}:{node.lineno}: {module}")
    return found


def test_plugins_and_examples_import_only_the_plugin_api():
    bad = forbidden_imports(REPO / "plugins", REPO / "examples")
    assert not bad, ("plugins and examples may import only tta_core.plugin and tta_core.testing; "
                     "export what they need from tta_core.plugin instead:\n" + "\n".join(bad))


def test_the_import_rule_finds_every_form_of_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "ok.py").write_text(textwrap.dedent("""\
        import tta_core.plugin
        from tta_core.plugin import hookimpl
        from tta_core.testing.conformance import check_sampler
        from tta_core import plugin, testing
        from . import sibling
        "tta_core.diffusion.processes:VPDiscrete"  # a registry target, not an import
        """))
    (tmp_path / "pkg" / "bad.py").write_text(textwrap.dedent("""\
        import tta_core
        import tta_core.errors as errors

        def factory():
            from tta_core.recipe import load_recipe

        class Thing:
            def method(self):
                from tta_core import sampling
        """))
    venv = tmp_path / "pkg" / ".venv" / "lib"
    venv.mkdir(parents=True)
    (venv / "vendored.py").write_text("import tta_core.errors\n")
    where = tmp_path / "pkg" / "bad.py"
    assert sorted(forbidden_imports(tmp_path)) == [f"{where}:1: tta_core", f"{where}:2: tta_core.errors",
                                                   f"{where}:5: tta_core.recipe", f"{where}:9: tta_core.sampling"]


def test_importing_the_plugin_api_does_not_import_torch():
    code = "import sys, tta_core.plugin; heavy = [m for m in ('torch', 'numpy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import tta_core.plugin pulled in {out.stdout.strip()}"


def test_every_exported_name_resolves_and_unknown_ones_fail_clearly():
    import tta_core.plugin as api

    assert len(api.__all__) == len(set(api.__all__)), "a name is listed twice in __all__"
    missing = [name for name in api.__all__ if getattr(api, name, None) is None]
    assert not missing, f"tta_core.plugin.__all__ names what it cannot give: {missing}"
    namespace: dict = {}
    exec("from tta_core.plugin import *", namespace)
    assert set(api.__all__) <= set(namespace)
    assert set(api.__all__) <= set(dir(api))
    with pytest.raises(AttributeError, match="no attribute 'save_spectogram'"):
        api.save_spectogram  # noqa: B018 (a typo reaches the caller as an AttributeError)


def test_every_name_the_plugins_import_from_the_api_is_exported():
    import tta_core.plugin as api

    used = set()
    for root in (REPO / "plugins", REPO / "examples"):
        for path in _python_files(root):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "tta_core.plugin":
                    used |= {a.name for a in node.names}
    assert used, "no plugin imports tta_core.plugin: the walk found no files"
    assert used - set(api.__all__) == set()


def test_the_plugin_api_and_the_core_share_one_object_per_name():
    from tta_core import plugin
    from tta_core.data.dataset import collate
    from tta_core.media import save_spectrogram
    from tta_core.training.objective import Objective

    # a plugin's isinstance checks and the trainer's must agree
    assert plugin.collate is collate and plugin.save_spectrogram is save_spectrogram
    assert plugin.Objective is Objective


# -- the media helpers ---------------------------------------------------------------------------


def test_write_audio_writes_channels_as_channels_and_clips_only_integer_formats(tmp_path):
    import soundfile
    import torch

    wave = torch.stack([torch.linspace(-2, 2, 800), torch.zeros(800)])  # [C, N], beyond full scale
    from tta_core.plugin import write_audio

    write_audio(tmp_path / "pcm.wav", wave, 8000)
    write_audio(tmp_path / "float.wav", wave, 8000, subtype="FLOAT")
    write_audio(tmp_path / "mono.flac", wave[0], 8000)
    pcm, rate = soundfile.read(tmp_path / "pcm.wav")
    assert rate == 8000 and pcm.shape == (800, 2)
    assert pcm[:, 0].max() == pytest.approx(1.0, abs=1e-3) and pcm[:, 0].min() == pytest.approx(-1.0, abs=1e-3)
    assert not pcm[:, 1].any()
    floats, _ = soundfile.read(tmp_path / "float.wav")
    assert floats[:, 0].max() == pytest.approx(2.0) and floats[:, 0].min() == pytest.approx(-2.0)
    mono, _ = soundfile.read(tmp_path / "mono.flac")
    assert mono.shape == (800,)
    with pytest.raises(ValueError, match=r"\[N\] or \[C, N\]"):
        write_audio(tmp_path / "x.wav", wave[None], 8000)
    assert not (tmp_path / "x.wav").exists()


def test_save_spectrogram_pictures_a_stereo_wave(tmp_path):
    import torch

    from tta_core.plugin import AudioConfig, MelConfig, save_spectrogram

    audio = AudioConfig(sample_rate=8000, duration=0.25, mel=MelConfig(n_fft=256, hop=64, win=256, n_mels=16,
                                                                        fmax=4000))
    save_spectrogram(tmp_path / "s.png", torch.randn(2, 2000) * 0.1, 16000, audio, "a stereo clip at another rate")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_spectrogram_shows_each_tone_in_its_band_and_time(tmp_path):
    """Two tones one after the other: in the picture, the brightest row of the first half of
    the plot is the band of the first, and that of the second half the band of the second."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    from tta_core import media
    from tta_core.plugin import AudioConfig, MelConfig, log_mel, save_spectrogram

    audio = AudioConfig(sample_rate=16000, duration=1.0, mel=MelConfig(n_fft=1024, hop=160, win=1024, n_mels=64,
                                                                        fmax=8000))
    t = torch.arange(16000) / 16000
    low, high = (0.5 * torch.sin(2 * math.pi * f * t) for f in (700.0, 3000.0))
    wave = torch.cat([low[:8000], high[8000:]])
    save_spectrogram(tmp_path / "s.png", wave, 16000, audio, "a low tone, then a high one")
    picture = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"), dtype=float)
    assert picture.shape == (media._SIZE[1], media._SIZE[0], 3)
    left, top = media._LEFT, media._TOP
    right, bottom = media._SIZE[0] - media._RIGHT, media._SIZE[1] - media._BOTTOM
    plot = picture[top:bottom, left:right]
    bright = plot[..., 0] + plot[..., 1]  # viridis: yellow is loud, dark blue quiet
    width = right - left

    def band_of(rows: np.ndarray) -> float:  # the picture's row (from the top) as a mel band
        return (len(rows) - 0.5 - float(np.argmax(rows))) / len(rows) * audio.mel.n_mels

    for tone, cols in ((low, slice(width // 10, 4 * width // 10)), (high, slice(6 * width // 10, 9 * width // 10))):
        expected = float(log_mel(tone[None], audio)[0, 0].mean(0).argmax())
        assert abs(band_of(bright[:, cols].mean(1)) - expected) <= 1.5


# -- the examples in CONTRIBUTING.md -------------------------------------------------------------


def contributing_examples() -> dict[str, str]:
    """path -> code of each block in CONTRIBUTING.md marked ``<!-- plugin-example: PATH -->``."""
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- plugin-example: (\S+) -->\n```python\n(.*?)```", text, re.S))


#: A mel autoencoder for the recipes below: the examples train and import it, and it is not
#: part of them (the built-in kl_vae would cost diffusers' import).
TINY_AE = '''
import torch
from tta_core.plugin import hookimpl


class TinyMelAE(torch.nn.Module):
    domain = "mel"

    def __init__(self, latent_channels: int = 2):
        super().__init__()
        self.enc = torch.nn.Conv2d(1, latent_channels, 3, stride=2, padding=1)
        self.dec = torch.nn.ConvTranspose2d(latent_channels, 1, 4, stride=2, padding=1)

    def encode(self, mel):
        return self.enc(mel)

    def decode(self, latent, **sampling):
        return self.dec(latent)

    def latent_shape(self, n):
        return (self.enc.out_channels, (n + 1) // 2, 8)


@hookimpl
def tta_register(register):
    register("autoencoder", "tiny_mel_ae", TinyMelAE)
'''


@pytest.fixture
def my_ae(tmp_path, fake_dists):
    """The CONTRIBUTING.md blocks installed as the distribution ``my-ae``, a tiny
    autoencoder beside them, four short clips and a recipe that trains on them."""
    blocks = contributing_examples()
    assert set(blocks) == {"my_ae/plugin.py", "my_ae/objectives.py", "my_ae/importers.py"}, sorted(blocks)
    site = tmp_path / "site"  # fake_dists' folder on sys.path
    (site / "my_ae").mkdir()
    (site / "my_ae" / "__init__.py").write_text("")
    for rel, code in blocks.items():
        (site / rel).write_text(code)
    fake_dists("my-ae", "0.1.0", {"plugin": blocks["my_ae/plugin.py"]})
    fake_dists("tta-test-tiny-ae", "1.0", {"tiny_ae": TINY_AE})

    from audio_fixtures import write_jsonl, write_wav

    rows = [{"audio": write_wav(tmp_path / "data" / f"{i}.wav", seconds=0.5, sr=8000, freq=300.0 * (i + 1),
                                seed=i).name, "caption": f"tone {i}"} for i in range(4)]
    manifest = write_jsonl(tmp_path / "data" / "manifest.jsonl", rows)
    recipe = tmp_path / "my_ae.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: my_ae
        audio: {{sample_rate: 8000, duration: 0.5, min_duration: 0.1,
                mel: {{n_fft: 256, hop: 64, win: 256, n_mels: 16, fmax: 4000}}}}
        data:
          train: {{type: jsonl, manifest: {json.dumps(str(manifest))}}}
        components:
          ae: {{type: tiny_mel_ae}}
        train:
          - name: fit
            objective: {{type: l1_recon}}
            trains: [ae]
            max_steps: 3
            batch_size: 2
            optimizer: {{lr: 0.01}}
            log_every: 1
            checkpoint_every: 3
        """))
    yield recipe
    for name in [m for m in sys.modules if m == "my_ae" or m.startswith("my_ae.")]:
        del sys.modules[name]


def _train(recipe: Path, run_dir: Path, *extra: str) -> int:
    from tta_core.cli import main

    return main([str(recipe), "train", "--run-dir", str(run_dir), "--no-progress", "--skip-memory-check", *extra])


def test_the_contributing_objective_trains_and_lowers_its_loss(my_ae, tmp_path):
    from tta_core.plugin import Objective, build_component

    assert isinstance(build_component("objective", {"type": "l1_recon"}), Objective)
    run = tmp_path / "run"
    assert _train(my_ae, run, "--set", "train.fit.objective.weight=0.5") == 0
    rows = [json.loads(line) for line in (run / "fit" / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["main"] for row in rows if "main" in row]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
    assert [0.5 * row["log/l1"] for row in rows if "main" in row] == pytest.approx(losses)  # the recipe's weight
    assert losses[-1] < losses[0]
    assert (run / "fit" / "checkpoints" / "step-00000003" / "ae.safetensors").is_file()


def test_the_contributing_objective_refuses_bad_settings_and_a_stage_that_does_not_train_the_autoencoder(
        my_ae, tmp_path, capsys):
    assert _train(my_ae, tmp_path / "run", "--set", "train.fit.objective.weight=0") == 2
    # Range(above=0) in the constructor's signature: refused before anything is built
    assert "train.fit.objective.weight': must be greater than 0" in capsys.readouterr().err
    other = tmp_path / "two.yaml"
    other.write_text(my_ae.read_text().replace("  ae: {type: tiny_mel_ae}", "  ae: {type: tiny_mel_ae}\n"
                                               "  ae2: {type: tiny_mel_ae}\nsample: {autoencoder: ae}")
                     .replace("trains: [ae]", "trains: [ae2]"))
    code = _train(other, tmp_path / "run2")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "l1_recon trains the recipe's autoencoder" in err
    assert not (tmp_path / "run2" / "fit" / "checkpoints").exists()


def test_the_contributing_importer_writes_a_run_with_the_files_weights(my_ae, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    from tta_core.cli import main

    torch.manual_seed(0)
    net = {"enc.weight": torch.randn(2, 1, 3, 3), "enc.bias": torch.randn(2),
           "dec.weight": torch.randn(2, 1, 4, 4), "dec.bias": torch.randn(1)}
    ema = {k: v * 0.5 for k, v in net.items()}
    ckpt = tmp_path / "model.safetensors"
    save_file({**{f"model.{k}": v for k, v in net.items()}, **{f"ema.{k}": v for k, v in ema.items()},
               "step": torch.tensor(1000)}, ckpt)
    run = tmp_path / "imported"
    assert main(["import", "my-ae", str(ckpt), "--recipe", str(my_ae), "--out", str(run)]) == 0, capsys.readouterr().err
    written = run / "fit" / "checkpoints" / "step-00000000"
    got, got_ema = load_file(written / "ae.safetensors"), load_file(written / "ae.ema.safetensors")
    assert got.keys() == net.keys() and all(torch.equal(got[k], net[k]) for k in net)
    assert all(torch.equal(got_ema[k], ema[k]) for k in ema)
    # the imported run fine-tunes with the objective, from the imported weights
    assert _train(run / "recipe.yaml", run, "--max-steps", "1") == 0

    wrong = tmp_path / "other.safetensors"
    save_file({f"net.{k}": v for k, v in net.items()}, wrong)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["import", "my-ae", str(wrong), "--recipe", str(my_ae), "--out", str(tmp_path / "nope")]) == 2
    assert "no weights under 'model.'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
