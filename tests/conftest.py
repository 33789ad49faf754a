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


# -- shared, expensive inputs: built once per test run -------------------------------------------


@pytest.fixture(scope="session")
def sets(tmp_path_factory):
    """Two synthetic `sounds` sets of 16 one-second clips, ``a`` and ``b``, with the same file
    names (what KL pairs) and captions."""
    from tta_core.cli import main

    root = tmp_path_factory.mktemp("evalsets")
    for name, seed in (("a", 0), ("b", 1)):
        assert main(["synth", "sounds", "--out", str(root / name), "--n", "16", "--seed", str(seed),
                     "--duration", "1.0"]) == 0
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sets):
    """The quickstart recipe at toy size, trained 2 steps per stage on ``sets/a``: the
    arguments that point a command at it (``--set``s, ``--run-dir``, ``--no-progress``) and
    its root folder. Tests read it; one that changes the run dir copies it first."""
    from tta_core.cli import main

    from test_shipped_recipes import TINY

    root = tmp_path_factory.mktemp("tinyrun")
    manifest = sets / "a" / "manifest.jsonl"
    sets_ = [f"data.train={{type: jsonl, manifest: {manifest}}}", f"data.valid={{type: jsonl, manifest: {manifest}}}",
             *[t for t in TINY if not t.startswith("components.unet") and not t.startswith("components.vocoder")],
             "components.unet.channels=[16,32]", "components.unet.norm_groups=8",
             "components.unet.attention_levels=[false,true]", "components.unet.head_dim=8",
             "components.text.config={d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32}",
             "components.unet.cross_attention_dim=16", "components.unet.pooled_dim=16",
             "components.vocoder={type: griffin_lim, n_iter: 2}",
             "train.vae.max_steps=2", "train.ldm.max_steps=2"]
    args = [x for s in sets_ for x in ("--set", s)] + ["--run-dir", str(root / "run"), "--no-progress"]
    assert main([str(REPO / "recipes" / "quickstart.yaml"), "train", *args]) == 0
    return args, root


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory):
    """A randomly initialised laion-clap checkpoint (HTSAT-tiny audio, its own small text
    tower: no tokenizer download), as laion-clap saves them."""
    import torch

    from tta_audioldm.clap import CLAPConditioner
    from test_clap import save_laion_checkpoint

    path = tmp_path_factory.mktemp("parts") / "630k-audioset-best.pt"
    torch.manual_seed(0)
    save_laion_checkpoint(CLAPConditioner(tmodel="transformer"), path)
    return path
