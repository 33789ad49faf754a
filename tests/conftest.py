import os
import sys
import textwrap
from pathlib import Path

import pytest

# Nothing may be downloaded in tests; libraries that try must fail at once, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
for var in ("TTA_STRICT_PLUGINS", "TTA_DISABLE_PLUGINS", "TTA_DISABLE_PLUGIN_AUTOLOAD", "TTA_PLUGINS"):
    os.environ.pop(var, None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Write fake installed distributions (dist-info + module) on a temporary sys.path entry.

    ``fake_dists(dist_name, version, {entry_point_name: module_source})`` makes the modules
    importable and their entry points visible to importlib.metadata, as pip would.
    """
    from tta_core import discovery

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    added = []

    def make(dist: str, version: str, plugins: dict[str, str]) -> None:
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[tta.plugins]"]
        for ep_name, source in plugins.items():
            module = f"{dist.replace('-', '_')}_{ep_name}"
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{ep_name} = {module}")
            added.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        discovery.reset()

    yield make
    for module in added:
        sys.modules.pop(module, None)
    discovery.reset()


@pytest.fixture(autouse=True)
def _fresh_plugins():
    from tta_core import discovery

    discovery.reset()
    yield
    discovery.reset()


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A local T5 folder (d_model 16, a word-level tokenizer of w0..w149): what `pretrained:`
    of the `t5` conditioner loads, written here instead of downloaded."""
    from test_audioldm import _tiny_t5, _word_tokenizer

    folder = tmp_path_factory.mktemp("parts") / "t5"
    _tiny_t5(folder)
    _word_tokenizer(folder, words=150)
    return folder
