import subprocess
import sys
import textwrap

from tta_core import cli
from tta_core.cli import main

PLUGIN = """
from tta_core.plugin import hookimpl

def kl_vae(latent_channels: int = 8):
    return latent_channels

@hookimpl
def tta_register(register):
    register("autoencoder", "kl_vae", kl_vae)
"""


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["plugns"]) == 2
    assert "Did you mean 'plugins'?" in capsys.readouterr().err
    assert main(["missing.yaml", "validate"]) == 2
    assert "recipe not found: missing.yaml" in capsys.readouterr().err


def test_unknown_verb_lists_verbs(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\n")
    assert main([str(path), "valdate"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'valdate'. Did you mean 'validate'?" in err


def test_validate_and_show(tmp_path, capsys, fake_dists):
    fake_dists("tta-vae", "1.0", {"vae": PLUGIN})
    path = tmp_path / "r.yaml"
    path.write_text("components:\n  vae: {type: kl_vae, latent_channels: 4}\n")
    assert main([str(path), "validate"]) == 0
    assert "ok (recipe 'r': 1 components, 0 training stages)" in capsys.readouterr().out
    assert main([str(path), "show", "--set", "components.vae.latent_channels=16"]) == 0
    out = capsys.readouterr().out
    assert "latent_channels: 16" in out and "# --set components.vae.latent_channels=16" in out
    assert main([str(path), "validate", "--set", "components.vae.latent_channels=big"]) == 2
    err = capsys.readouterr().err
    assert "error: --set components.vae.latent_channels=big: 'components.vae.latent_channels': expected an integer" in err
    path.write_text("components:\n  vae: {type: kl_vea}\n")
    assert main([str(path), "validate"]) == 2
    assert f"{path}:2: 'components.vae': unknown" in capsys.readouterr().err


def test_runtime_failures_exit_1_with_one_message_and_traceback_only_with_debug(tmp_path, capsys, monkeypatch):
    def boom(args):
        raise ValueError("something broke")

    monkeypatch.setitem(cli.COMMANDS, "boom", cli.Command("boom", "fails", boom))
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert "error: ValueError: something broke" in err and "Traceback" not in err
    assert main(["boom", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    assert main(["plugins", "--no-such-flag"]) == 2


def test_console_script_is_installed():
    exe = __import__("pathlib").Path(sys.executable).parent / "tta-run"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "tta-run RECIPE VERB" in out.stdout
    out = subprocess.run([sys.executable, "-m", "tta_core.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("tta ")
