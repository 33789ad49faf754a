import json
import subprocess
import sys

import pytest

from tta_core import discovery
from tta_core.cli import main
from tta_core.errors import PluginError, UnknownComponentError

GOOD = """
from tta_core.plugin import hookimpl

def ddim(denoise, x, schedule, *, generator=None, callback=None):
    return x

@hookimpl
def tta_register(register):
    register("sampler", "toy_ddim", ddim)
    register("vocoder", "lazy_voc", "collections:OrderedDict")
"""

BROKEN = """
raise RuntimeError("this plugin is broken on purpose")
"""

OTHER = """
from tta_core.plugin import hookimpl

@hookimpl
def tta_register(register):
    register("sampler", "euler", lambda denoise, x, schedule, generator=None, callback=None: x)
"""

DUPLICATE = """
from tta_core.plugin import hookimpl

@hookimpl
def tta_register(register):
    register("sampler", "heun", lambda denoise, x, schedule, generator=None, callback=None: x)
    register("sampler", "toy_ddim", lambda denoise, x, schedule, generator=None, callback=None: x)
"""


def test_plugins_found_through_entry_points_with_provenance(fake_dists):
    fake_dists("tta-good", "1.2.3", {"good": GOOD})
    plugins = discovery.load_plugins()
    entry = plugins.registry.get("sampler", "toy_ddim")
    assert entry.origin.plugin == "good"
    assert entry.origin.distribution == "tta-good"
    assert entry.origin.version == "1.2.3"
    assert entry.build(denoise=None, x=5, schedule=None) == 5
    # a factory registered as "module:attr" is imported when first used
    assert plugins.registry.get("vocoder", "lazy_voc").load().__name__ == "OrderedDict"


def test_broken_plugin_is_reported_and_others_keep_working(fake_dists, capsys):
    fake_dists("tta-good", "1.0", {"good": GOOD})
    fake_dists("tta-broken", "0.1", {"broken": BROKEN})
    plugins = discovery.load_plugins()
    assert plugins.registry.has("sampler", "toy_ddim")
    (broken,) = plugins.broken
    assert broken.name == "broken" and "RuntimeError: this plugin is broken on purpose" in broken.status

    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(r) == {"kind", "name", "plugin", "distribution", "version", "status"} for r in rows)
    by_plugin = {r["plugin"]: r for r in rows}
    assert by_plugin["broken"]["status"].startswith("broken: ")
    assert by_plugin["broken"]["distribution"] == "tta-broken"
    ddim = next(r for r in rows if r["name"] == "toy_ddim")
    assert ddim == {"kind": "sampler", "name": "toy_ddim", "plugin": "good", "distribution": "tta-good",
                    "version": "1.0", "status": "ok"}


def test_strict_mode_makes_a_broken_plugin_fatal(fake_dists, monkeypatch, capsys):
    fake_dists("tta-broken", "0.1", {"broken": BROKEN})
    with pytest.raises(PluginError, match="broken"):
        discovery.load_plugins(strict=True)
    assert main(["plugins", "--strict-plugins"]) == 1
    assert "this plugin is broken on purpose" in capsys.readouterr().err
    discovery.reset()
    monkeypatch.setenv("TTA_STRICT_PLUGINS", "1")
    assert main(["plugins"]) == 1


def test_disable_switch_skips_plugins_by_name(fake_dists, monkeypatch):
    fake_dists("tta-good", "1.0", {"good": GOOD})
    fake_dists("tta-broken", "0.1", {"broken": BROKEN})
    monkeypatch.setenv("TTA_DISABLE_PLUGINS", "broken, good")
    plugins = discovery.load_plugins()
    assert not plugins.broken
    assert not plugins.registry.has("sampler", "toy_ddim")
    with pytest.raises(UnknownComponentError) as err:
        plugins.registry.get("sampler", "toy_ddim")
    assert "plugin 'good' (disabled by TTA_DISABLE_PLUGINS)" in str(err.value)


def test_autoload_off_loads_only_named_plugins(fake_dists, monkeypatch):
    fake_dists("tta-good", "1.0", {"good": GOOD, "other": OTHER})
    monkeypatch.setenv("TTA_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("TTA_PLUGINS", "other")
    plugins = discovery.load_plugins()
    assert plugins.registry.has("sampler", "euler")
    assert not plugins.registry.has("sampler", "toy_ddim")


def test_duplicate_name_names_both_origins_and_registers_nothing_of_the_second(fake_dists):
    fake_dists("tta-good", "1.0", {"good": GOOD})
    fake_dists("tta-dup", "2.0", {"zdup": DUPLICATE})
    plugins = discovery.load_plugins()
    (dup,) = plugins.broken
    assert "sampler 'toy_ddim' is registered twice" in dup.status
    assert "plugin 'good' (tta-good 1.0)" in dup.status and "plugin 'zdup' (tta-dup 2.0)" in dup.status
    assert plugins.registry.get("sampler", "toy_ddim").origin.plugin == "good"
    assert not plugins.registry.has("sampler", "heun")  # all of a plugin's registrations, or none
    with pytest.raises(PluginError):
        discovery.load_plugins(strict=True)


def test_unknown_kind_in_register_suggests_the_right_one(fake_dists):
    fake_dists("tta-bad", "1.0", {"bad": """
from tta_core.plugin import hookimpl

@hookimpl
def tta_register(register):
    register("samplr", "x", print)
"""})
    (bad,) = discovery.load_plugins().broken
    assert "unknown kind 'samplr'" in bad.status and "Did you mean 'sampler'?" in bad.status


def test_unknown_name_lists_the_registered_and_the_closest(fake_dists):
    fake_dists("tta-good", "1.0", {"good": GOOD, "other": OTHER})
    registry = discovery.load_plugins().registry
    with pytest.raises(UnknownComponentError) as err:
        registry.get("sampler", "toy_ddmi")
    message = str(err.value)
    assert "unknown sampler 'toy_ddmi'" in message
    assert "Did you mean 'toy_ddim' (from plugin 'good' (tta-good 1.0))?" in message
    registered = message.split("Registered: ")[1].split(".")[0].split(", ")
    assert {"toy_ddim", "euler"} <= set(registered) and registered == sorted(registered)
    assert err.value.exit_code == 2


def test_listing_plugins_does_not_import_torch(fake_dists, tmp_path):
    """`tta-run plugins` must stay fast: listing imports no heavy library."""
    code = (
        "import sys; from tta_core.cli import main; rc = main(['plugins']);"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules];"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


SECOND_DEFAULT = """
from tta_core.plugin import hookimpl

@hookimpl
def tta_register(register):
    register("embedder", "my_embedder", "collections:OrderedDict", default=True)
"""


def test_a_kinds_default_comes_from_the_plugin_that_offers_it_and_two_offers_make_the_user_choose(
        fake_dists, tmp_path, capsys):
    registry = discovery.get_registry()
    assert registry.default("embedder") == "mel_stats"  # tta_eval offers it: the core names none
    assert registry.default("sampler") is None

    fake_dists("tta-my-embedder", "1.0", {"myemb": SECOND_DEFAULT})
    registry = discovery.get_registry()
    assert registry.has("embedder", "my_embedder") and registry.default("embedder") is None
    for name in ("gen", "ref"):
        (tmp_path / name).mkdir()
    code = main(["eval", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--embedder" in err and "my_embedder" in err and "mel_stats" in err
    assert not (tmp_path / "o").exists()
