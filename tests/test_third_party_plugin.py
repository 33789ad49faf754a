"""A third-party plugin through real packaging: examples/tta-fast-samplers is pip-installed
into a fresh virtual environment (which sees this one's packages, tta included), listed by
`tta-run plugins` with its distribution and version, used by `sample --sampler dpmpp_2m`,
its own tests run there, and uninstalled again. examples/tta-edm, a process from outside the
variance-preserving family, trains the quickstart and samples with every built-in sampler
under guidance. A plugin made for another tta version is refused with a message that says
so, and the others still load."""

import json
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tta-fast-samplers"
EDM_EXAMPLE = REPO / "examples" / "tta-edm"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A bare virtual environment on top of this one: pip installs into it, uninstalls from it."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    python = root / "env" / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    # addsitedir (not a plain path line) so this environment's .pth files, tta's editable
    # install among them, are processed too
    Path(own, "_parent_env.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n")
    return python


def pip(python, *args):
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args, "--quiet",
                           "--disable-pip-version-check"], capture_output=True, text=True)


def tta(python, *args, cwd=REPO):
    return subprocess.run([str(python), "-m", "tta_core.cli", *args], capture_output=True, text=True, cwd=cwd)


def plugin_rows(python):
    result = tta(python, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def quickstart_run(tiny_run):
    """The arguments that point a command at the quickstart recipe trained at toy size
    (the session's tiny run)."""
    return tiny_run[0]


@pytest.mark.slow
def test_install_list_use_and_uninstall_the_fast_samplers(venv, quickstart_run, tmp_path):
    source = tmp_path / "tta-fast-samplers"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    before = {(r["kind"], r["name"]) for r in plugin_rows(venv)}
    assert ("sampler", "dpmpp_2m") not in before and ("sampler", "ddim") in before

    installed = pip(venv, "install", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stderr
    rows = [r for r in plugin_rows(venv) if r["plugin"] == "fast_samplers"]
    assert {r["name"] for r in rows} == {"dpmpp_2m", "euler", "heun", "pndm"}
    assert all(r["kind"] == "sampler" and r["status"] == "ok" and r["distribution"] == "tta-fast-samplers"
               and r["version"] == "0.3.0" for r in rows)

    out = tmp_path / "out"
    sampled = tta(venv, str(REPO / "recipes" / "quickstart.yaml"), "sample", "--text", "a rising chirp", "--sampler",
                  "dpmpp_2m", "--steps", "20", "--out", str(out), "--no-progress", *quickstart_run)
    assert sampled.returncode == 0, sampled.stderr
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["sampler"] == {"type": "dpmpp_2m"} and row["steps"] == 20 and (out / row["file"]).exists()

    # the example's own tests, against the installed distribution
    tests = subprocess.run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
                           capture_output=True, text=True, cwd=source)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]

    removed = pip(venv, "uninstall", "-y", "tta-fast-samplers")
    assert removed.returncode == 0, removed.stderr
    assert {(r["kind"], r["name"]) for r in plugin_rows(venv)} == before
    refused = tta(venv, str(REPO / "recipes" / "quickstart.yaml"), "sample", "--text", "x", "--sampler", "dpmpp_2m",
                  "--out", str(tmp_path / "again"), *quickstart_run)
    assert refused.returncode == 2 and "unknown sampler 'dpmpp_2m'" in refused.stderr


#: one interpreter for the training run and the samplings (each tta-run start imports diffusers)
EDM_RUN = """
import sys
from tta_core.cli import main

recipe, run, out, manifest = sys.argv[1:5]
sets = ["--set", "components.process={type: edm}", "--set", f"data.train.manifest={manifest}", "--run-dir", run]
if main([recipe, "train", "--max-steps", "2", "--no-progress", "--skip-memory-check", *sets]):
    sys.exit("train failed")
for sampler in ("ddpm", "ddim", "vsampler"):
    if main([recipe, "sample", "--text", "a rising chirp", "--sampler", sampler, "--steps", "3", "--guidance", "3",
             "--duration", "0.64", "--out", out, "--no-progress", *sets]):
        sys.exit(f"sample with {sampler} failed")
"""


@pytest.mark.slow
def test_install_the_edm_process_then_train_and_sample_with_every_sampler(venv, sets, tmp_path):
    import numpy as np
    import soundfile

    source = tmp_path / "tta-edm"
    shutil.copytree(EDM_EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    installed = pip(venv, "install", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stderr
    try:
        rows = [r for r in plugin_rows(venv) if r["plugin"] == "edm"]
        assert [(r["kind"], r["name"], r["status"], r["distribution"], r["version"]) for r in rows] == [
            ("process", "edm", "ok", "tta-edm", "0.1.0")]

        out, manifest = tmp_path / "out", str(sets / "a" / "manifest.jsonl")
        run = subprocess.run([str(venv), "-c", EDM_RUN, str(REPO / "recipes" / "quickstart.yaml"),
                              str(tmp_path / "run"), str(out), manifest], capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        samples = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert [r["sampler"]["type"] for r in samples] == ["ddpm", "ddim", "vsampler"]
        for row in samples:
            wave, rate = soundfile.read(out / row["file"])
            assert rate == 16000 and len(wave) == round(0.64 * 16000) and np.isfinite(wave).all()

        tests = subprocess.run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
                               capture_output=True, text=True, cwd=source)
        assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    finally:
        removed = pip(venv, "uninstall", "-y", "tta-edm")
    assert removed.returncode == 0, removed.stderr
    assert not any(r["name"] == "edm" for r in plugin_rows(venv))


@pytest.mark.slow
def test_a_plugin_for_another_tta_version_is_refused_and_the_others_load(venv, tmp_path):
    source = tmp_path / "tta-future"
    (source / "tta_future").mkdir(parents=True)
    (source / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tta-future"
        version = "2.0.0"
        [project.entry-points."tta.plugins"]
        future = "tta_future"
        """))
    (source / "tta_future" / "__init__.py").write_text(textwrap.dedent("""\
        from tta_core.plugin import hookimpl

        tta_requires = ">=9.0"

        @hookimpl
        def tta_register(register):
            register("sampler", "from_the_future", "tta_future:missing")
        """))
    installed = pip(venv, "install", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stderr
    try:
        rows = plugin_rows(venv)
        future = [r for r in rows if r["plugin"] == "future"]
        assert len(future) == 1 and future[0]["status"].startswith("broken: unsupported tta version")
        assert "supports tta >=9.0" in future[0]["status"] and "this is tta 0.1.0" in future[0]["status"]
        assert not any(r["name"] == "from_the_future" for r in rows)
        assert any(r["name"] == "ddim" and r["status"] == "ok" for r in rows)  # the others load
        strict = tta(venv, "plugins", "--strict-plugins")
        assert strict.returncode != 0 and "unsupported tta version" in strict.stderr
    finally:
        pip(venv, "uninstall", "-y", "tta-future")
