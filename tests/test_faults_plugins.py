"""Faults from recipes and plugins: YAML alias bombs, plugins that print, broken plugins."""

import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tta_core import yamlio
from tta_core.cli import main
from tta_core.errors import RecipeError
from tta_core.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 1536 * 2**20  # far above what refusing needs, far below what expanding needs

VAE = """
from tta_core.plugin import hookimpl

def kl_vae(latent_channels: int = 8):
    return latent_channels

@hookimpl
def tta_register(register):
    register("autoencoder", "toy_vae", kl_vae)
"""

NOISY = """
print("noise from import")
from tta_core.plugin import hookimpl

def kl_vae(latent_channels: int = 8):
    return latent_channels

@hookimpl
def tta_register(register):
    print("noise from the hook")
    register("autoencoder", "toy_vae", kl_vae)
    register("vocoder", "noisy_voc", "noisy_factory:NoisyVocoder")
"""

NOISY_FACTORY = """
print("noise from the factory module")

class NoisyVocoder:
    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = sample_rate
"""

BROKEN = """
print("noise before breaking")
raise RuntimeError("this plugin is broken on purpose")
"""

WARNING = "warning: plugin 'broken' (tta_broken_broken) broken: import of 'tta_broken_broken' failed"


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level lists the one before `width` times."""
    lines = ["name: bomb", "a: &a [" + ", ".join(["lol"] * width) + "]"]
    for prev, name in zip("abcdefghijklmnop", "bcdefghijklmnop"[: levels - 1]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_alias_bomb_is_refused_at_once_with_its_line_and_the_limit(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_bomb())
    before = _digest(recipe)
    code = "import sys; from tta_core.cli import main; sys.exit(main(sys.argv[1:]))"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(recipe), "show"], capture_output=True, text=True,
        timeout=120, preexec_fn=_limit_memory, env={**os.environ, "TTA_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    # level f (line 7) is the first whose alias passes 100 000 expanded nodes
    assert f"error: {recipe}:7: the alias '*e' takes the document past the limit of 100000 nodes" in proc.stderr
    assert "alias bomb" in proc.stderr
    assert proc.stdout == ""
    assert elapsed < 30, f"refusing took {elapsed:.1f} s"
    assert _digest(recipe) == before


def test_alias_budget_counts_every_expanded_node_and_stops_one_past_it(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlio, "ALIAS_BUDGET", 20)
    # *a stands for 4 nodes (the list and its 3 items); *b for 1 + 2 * 4 = 9
    ok = "a: &a [1, 2, 3]\nb: &b [*a, *a]\nc: *b\n"  # aliases add 4 + 4 + 9 = 17
    assert yamlio.to_plain(yamlio.load_yaml(ok, "ok.yaml")) == {
        "a": [1, 2, 3], "b": [[1, 2, 3], [1, 2, 3]], "c": [[1, 2, 3], [1, 2, 3]]}
    over = ok + "d: [0,\n  *a]\n"  # 17 + 4 = 21: the *a on line 5 passes the budget
    with pytest.raises(yamlio.YamlError) as info:
        yamlio.load_yaml(over, "over.yaml")
    assert str(info.value.loc) == "over.yaml:5"
    assert "the alias '*a' takes the document past the limit of 20 nodes" in info.value.message


def test_alias_bomb_in_a_set_override_is_a_recipe_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    before = _digest(recipe)
    flow = _bomb().replace("name: bomb\n", "").replace("\n", ", ").rstrip(", ")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, [f"extra={{{flow}}}"])
    assert RecipeError.exit_code == 2
    assert "--set extra=" in str(info.value) and "past the limit of 100000 nodes" in str(info.value)
    assert _digest(recipe) == before


def test_shipped_recipes_and_small_aliases_still_load(tmp_path):
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert load_recipe(path).name
    small = tmp_path / "small.yaml"
    small.write_text("name: small\nshared: &s {type: ddim, steps: 10}\nsample: {sampler: *s}\n")
    assert load_recipe(small).to_dict()["sample"] == {"sampler": {"type": "ddim", "steps": 10}}


def _noisy_plugin(fake_dists, tmp_path):
    site = tmp_path / "site"
    fake_dists("tta-noisy", "1.0", {"noisy": NOISY})
    (site / "noisy_factory.py").write_text(NOISY_FACTORY)
    importlib.invalidate_caches()


@pytest.fixture
def forget_noisy_factory():
    yield
    sys.modules.pop("noisy_factory", None)


def test_plugin_output_goes_to_stderr_and_plugins_json_stays_json(fake_dists, tmp_path, capsys,
                                                                  forget_noisy_factory):
    _noisy_plugin(fake_dists, tmp_path)
    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert {(r["kind"], r["name"], r["plugin"]) for r in rows} >= {
        ("autoencoder", "toy_vae", "noisy"), ("vocoder", "noisy_voc", "noisy")}
    assert "noise from import" in err and "noise from the hook" in err
    assert "noisy_factory" not in sys.modules  # listing imports no factory

    # validating binds the lazily imported factory's signature: its output goes to stderr too
    recipe = tmp_path / "r.yaml"
    recipe.write_text("components:\n  voc: {type: noisy_voc, sample_rate: 8000}\n")
    assert main([str(recipe), "validate"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{recipe}: ok (recipe 'r': 1 components, 0 training stages)\n"
    assert "noise from the factory module" in err


def test_plugins_json_from_the_console_script_is_json_despite_a_noisy_plugin(fake_dists, tmp_path,
                                                                             forget_noisy_factory):
    _noisy_plugin(fake_dists, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    exe = os.path.join(os.path.dirname(sys.executable), "tta-run")
    proc = subprocess.run([exe, "plugins", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert any(r["name"] == "noisy_voc" for r in json.loads(proc.stdout))
    assert "noise from import" in proc.stderr and "noise from the hook" in proc.stderr


def test_broken_plugin_warning_is_printed_once_per_command(fake_dists, tmp_path, capsys):
    fake_dists("tta-vae", "1.0", {"vae": VAE})
    fake_dists("tta-broken", "0.1", {"broken": BROKEN})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("components:\n  vae: {type: toy_vae, latent_channels: 4}\n")
    for _ in range(2):  # each command warns, once
        assert main([str(recipe), "validate"]) == 0
        out, err = capsys.readouterr()
        assert err.count(WARNING) == 1, err
        assert "ok (recipe 'r'" in out and "warning:" not in out

    # sample asks for the recipe and the plugins too; a --run-dir that is a file stops it cheaply
    taken = tmp_path / "run"
    taken.write_text("not a folder\n")
    before = _digest(taken)
    assert main([str(recipe), "sample", "--text", "a chirp", "--run-dir", str(taken)]) == 2
    out, err = capsys.readouterr()
    assert err.count(WARNING) == 1, err
    assert f"--run-dir {taken} is a file" in err and out == ""
    assert _digest(taken) == before


def test_broken_plugin_keeps_show_json_and_plugins_json_valid(fake_dists, tmp_path, capsys):
    fake_dists("tta-vae", "1.0", {"vae": VAE})
    fake_dists("tta-broken", "0.1", {"broken": BROKEN})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ncomponents:\n  vae: {type: toy_vae, latent_channels: 4}\n")
    before = _digest(recipe)

    assert main([str(recipe), "show", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"name": "r", "components": {"vae": {"type": "toy_vae", "latent_channels": 4}}}

    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    by_plugin = {r["plugin"]: r for r in json.loads(out)}
    assert by_plugin["broken"]["status"].startswith(
        "broken: import of 'tta_broken_broken' failed: RuntimeError: this plugin is broken on purpose")
    assert by_plugin["vae"]["status"] == "ok"
    assert "noise before breaking" in err
    assert _digest(recipe) == before
