"""The conformance kit's checks for processes, objectives, importers and dataset readers: every
built-in one passes, and components that break their contract are caught with a message that
says what is wrong."""

import csv
import json
from pathlib import Path

import pytest
import torch

from audio_fixtures import write_jsonl, write_wav
from conformance_kit import (BIRDS_TINY, QUICKSTART_TINY, amphion_sources, birds_sources, ckpt_sources,
                             diffusers_sources, write_tones)
from tta_core.diffusion.processes import VDiffusion
from tta_core.discovery import get_registry
from tta_core.errors import UsageError
from tta_core.plugin import build_component
from tta_core.testing.conformance import (
    ConformanceError, check_dataset_reader, check_importer, check_objective, check_process,
)
from tta_datasets import readers

REPO = Path(__file__).resolve().parents[1]


# -- processes ------------------------------------------------------------------------------------

def _registered_processes():
    return sorted(e.name for e in get_registry().entries("process"))


@pytest.mark.parametrize("name", _registered_processes())
def test_every_registered_process_conforms_with_its_defaults(name):
    check_process(build_component("process", {"type": name}))


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_vp_discrete_conforms_with_each_prediction_and_spacing(prediction, spacing):
    check_process(build_component("process", {"type": "vp_discrete", "prediction": prediction, "spacing": spacing}))


@pytest.mark.parametrize("spacing, offset", [
    ("leading", 1),  # AudioLDM's and Amphion's DDIM/PNDM settings
    ("trailing", 0),
    pytest.param("leading", 0, marks=pytest.mark.xfail(strict=True, raises=ConformanceError, reason=(
        "vp_discrete with set_alpha_to_one false ends on alphabar_0, the level its last visited timestep 0 "
        "already has: the last two rows of the schedule repeat a level"))),
    pytest.param("linspace", 1, marks=pytest.mark.xfail(strict=True, raises=ConformanceError, reason=(
        "linspace spacing visits timestep 0 whatever steps_offset is, and set_alpha_to_one false ends there "
        "again: the last two rows of the schedule repeat a level"))),
])
def test_vp_discrete_ending_on_the_first_training_level(spacing, offset):
    check_process(build_component("process", {"type": "vp_discrete", "spacing": spacing, "steps_offset": offset,
                                              "set_alpha_to_one": False, "betas": "scaled_linear",
                                              "beta_start": 0.0015, "beta_end": 0.0195}))


@pytest.mark.parametrize("prediction", ["v", "epsilon", "sample"])
def test_v_diffusion_conforms_with_each_prediction(prediction):
    check_process(build_component("process", {"type": "v_diffusion", "prediction": prediction}))


class Reversed(VDiffusion):
    def schedule(self, steps):
        return super().schedule(steps).flip(0)


class NoAlphaInXt(VDiffusion):
    def training_pair(self, x0, *, generator=None):
        pair = super().training_pair(x0, generator=generator)
        return type(pair)(x0 + pair.sigma[:, None, None] * pair.noise, *[getattr(pair, f) for f in
                                                                           ("t", "target", "alpha", "sigma", "noise")])


class WrongInverse(VDiffusion):
    def to_x0(self, output, x, alpha, sigma):
        return x - output  # not v's inverse


class GlobalNoise(VDiffusion):
    def training_pair(self, x0, *, generator=None):
        return super().training_pair(x0)  # draws from torch's global generator


class OtherTimes(VDiffusion):
    def net_time(self, alpha, sigma):
        return super().net_time(alpha, sigma) * 1000  # training gives the net s in [0, 1]


class DetachedLoss(VDiffusion):
    def loss(self, net, x0, cond, *, generator=None):
        return super().loss(net, x0, cond, generator=generator).detach()


@pytest.mark.parametrize("process, message", [
    (Reversed(sigma_min=0.1, sigma_max=0.9), "not ordered from most to least noisy: row 1"),
    (NoAlphaInXt(), "x_t is not alpha \\* x0 \\+ sigma \\* noise"),
    (WrongInverse(), "to_x0 of a training pair's exact target is not its x0"),
    (GlobalNoise(), "with the same generator seed differ"),
    (OtherTimes(), "net_time of the same levels"),
    (DetachedLoss(), "loss has no gradient"),
])
def test_a_process_that_breaks_its_contract_is_caught(process, message):
    with pytest.raises(ConformanceError, match=f"^{type(process).__name__}: .*{message}"):
        check_process(process)


# -- objectives -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tones(tmp_path_factory.mktemp("tones"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe, stage, steps, tiny", [
    ("recipes/quickstart.yaml", "vae", (0, 10**6), QUICKSTART_TINY),  # 10**6: past disc_start
    ("recipes/quickstart.yaml", "ldm", (0,), QUICKSTART_TINY),
    ("recipes/diffae_birds_tiny.yaml", "diffae", (0,), BIRDS_TINY),
    ("recipes/diffae_birds_tiny.yaml", "diffgen", (0,), BIRDS_TINY),
], ids=["vae_gan", "latent_diffusion", "diffae", "latent_diffusion-1d"])
def test_built_in_objectives_conform(recipe, stage, steps, tiny, tones, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    check_objective(recipe, stage, tmp_path / "run", overrides=[*tiny, f"data.train.manifest={tones}"], steps=steps)


TOY_OBJECTIVES = '''
import torch
from tta_core.plugin import hookimpl


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.lin(x)


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((4,), float(i)), "y": torch.tensor([float(i % 2)])}


class Fit:
    def __init__(self, flaw: str = "none"):
        self.flaw = flaw

    def setup(self, ctx):
        self.net, self.frozen = ctx.components["net"], ctx.components["frozen"]
        if self.flaw == "unfreeze":
            self.frozen.requires_grad_(True)

    def train_dataset(self, ctx):
        return Points()

    def parameter_groups(self, ctx):
        params = list(self.net.parameters())
        if self.flaw == "frozen_params":
            params += list(self.frozen.parameters())
        return {"main": params}

    def losses(self, batch, step, generator):
        if self.flaw == "global_noise":
            noise = torch.randn(batch["x"].shape)
        else:
            noise = torch.randn(batch["x"].shape, generator=generator)
        x = batch["x"] + 0.1 * noise
        out = {"main": ((self.net(x) + self.frozen(x).detach() - batch["y"]) ** 2).mean()}
        if self.flaw == "unknown_group":
            out["extra"] = out["main"] * 2
        if self.flaw == "detached":
            out["main"] = out["main"].detach()
        return out

    def validate(self, ctx, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "ok.txt").write_text("fine")
        if self.flaw == "writes_outside":
            (ctx.run_dir / "stray.txt").write_text("not here")
        if self.flaw == "leaves_eval":
            self.net.eval()
        return {"clips": 1.0}


@hookimpl
def tta_register(register):
    register("denoiser", "toy_net", Net)
    register("objective", "toy_fit", Fit)
'''

TOY_RECIPE = """
name: toy
components:
  net: {type: toy_net}
  frozen: {type: toy_net}
train:
  - {name: fit, objective: {type: toy_fit, flaw: %s}, trains: [net], frozen: [frozen]}
"""


@pytest.mark.parametrize("flaw, message", [
    ("none", None),
    ("unfreeze", "setup left 'frozen' in eval mode with gradients"),
    ("frozen_params", "holds parameters of 'frozen', which the stage does not train"),
    ("global_noise", "do not depend on the generator"),
    ("unknown_group", "gives 'extra', which is no parameter group"),
    ("detached", "must be a float scalar with a gradient"),
    ("writes_outside", "validate wrote outside .*stray.txt"),
    ("leaves_eval", "validate left 'net' in eval mode"),
])
def test_an_objective_that_breaks_what_the_trainer_relies_on_is_caught(flaw, message, tmp_path, fake_dists):
    fake_dists("tta-toy-objectives", "1.0", {"toy": TOY_OBJECTIVES})
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(TOY_RECIPE % flaw)
    if message is None:
        check_objective(recipe, "fit", tmp_path / "run")
        assert (tmp_path / "run" / "fit" / "samples" / "step-00000001" / "ok.txt").exists()
        return
    with pytest.raises(ConformanceError, match=f"^Fit: .*{message}"):
        check_objective(recipe, "fit", tmp_path / "run")


# -- importers ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["diffae-birds", "audioldm-diffusers", "audioldm-ckpt", "amphion-tta"])
def test_built_in_importers_conform(fmt, tmp_path, tiny_t5, monkeypatch):
    monkeypatch.chdir(REPO)
    make = {"diffae-birds": lambda: birds_sources(tmp_path / "src", tiny_t5),
            "audioldm-diffusers": lambda: diffusers_sources(tmp_path / "src"),
            "audioldm-ckpt": lambda: ckpt_sources(tmp_path / "src"),
            "amphion-tta": lambda: amphion_sources(tmp_path / "src", tiny_t5)}[fmt]
    sources, recipe, overrides = make()
    registry = get_registry()
    check_importer(registry.get("importer", fmt).build(), sources, recipe=recipe, overrides=overrides,
                   registry=registry, fmt=fmt)


class TinyImporter:
    """a safetensors file of the toy net's weights"""

    def __init__(self, flaw="none"):
        self.flaw = flaw

    def __call__(self, sources, *, out, recipe, overrides, registry):
        from safetensors.torch import load_file

        from tta_core.importing import Imported
        from tta_core.plugin import load_recipe

        try:
            state = load_file(str(sources[0]))
        except Exception as exc:
            if self.flaw == "raw_errors":
                raise
            raise UsageError(f"{sources[0]}: not a safetensors file ({exc})") from None
        if set(state) != {"lin.weight", "lin.bias"} and self.flaw != "accepts_anything":
            raise UsageError(f"{sources[0]}: not the toy net's weights")
        if self.flaw == "writes_source":
            with open(sources[0], "ab") as f:
                f.write(b" ")
        if self.flaw == "renamed":
            state = {"linear." + k.split(".", 1)[1]: v for k, v in state.items()}
        return Imported(recipe=load_recipe(recipe), weights={"net": state})


@pytest.fixture
def toy_source(tmp_path, fake_dists):
    from safetensors.torch import save_file

    fake_dists("tta-toy-objectives", "1.0", {"toy": TOY_OBJECTIVES})
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(TOY_RECIPE % "none")
    torch.manual_seed(0)
    save_file({"lin.weight": torch.randn(1, 4), "lin.bias": torch.randn(1)}, str(tmp_path / "net.safetensors"))
    return tmp_path / "net.safetensors", str(recipe)


@pytest.mark.parametrize("flaw, message", [
    ("none", None),
    ("raw_errors", "on other.ckpt \\(not its format\\) raised SafetensorError"),
    ("accepts_anything", "took other.safetensors, which is not its format, without a word"),
    ("writes_source", "changed its sources: changed .*net.safetensors"),
    ("renamed", "do not fit the components its recipe builds"),
])
def test_an_importer_that_breaks_its_contract_is_caught(flaw, message, toy_source):
    source, recipe = toy_source
    if message is None:
        check_importer(TinyImporter(flaw), [source], recipe=recipe)
        return
    with pytest.raises(ConformanceError, match=f"^TinyImporter: .*{message}"):
        check_importer(TinyImporter(flaw), [source], recipe=recipe)


# -- dataset readers ------------------------------------------------------------------------------

def _jsonl(root):
    for name in ("a", "b", "c"):
        write_wav(root / "audio" / f"{name}.wav")
    manifest = write_jsonl(root / "m.jsonl", [
        {"id": "a", "audio": "audio/a.wav", "caption": "a tone"},
        {"audio": "audio/b.wav", "caption": ["first", "  ", "second "]},
        {"id": "gone", "audio": "audio/missing.wav", "caption": "nothing here"},
        {"id": "c", "audio": "audio/c.wav", "caption": "   "},
        {"id": "a", "audio": "audio/c.wav", "caption": "same id"},
        "{not json",
    ])
    return readers.jsonl, {"manifest": str(manifest)}, "manifest", 2, \
        {"missing_file": 1, "no_caption": 1, "duplicate_id": 1, "bad_row": 1}


def _audiocaps(root):
    for uid in ("u1", "u2"):
        write_wav(root / "wav" / f"{uid}.wav")
    meta = root / "train.json"
    meta.write_text(json.dumps([
        {"Dataset": "AudioCaps", "Uid": "u1", "Caption": "a dog barks"},
        {"Dataset": "AudioCaps", "Uid": "u2", "Caption": "rain falls"},
        {"Dataset": "AudioCaps", "Uid": "u3", "Caption": "no file"},
        {"Dataset": "AudioCaps", "Caption": "no uid"},
    ]))
    return readers.audiocaps, {"metadata": str(meta)}, "metadata", 2, {"missing_file": 1, "bad_row": 1}


def _audioldm(root):
    write_wav(root / "audioset" / "clips" / "x.wav")
    write_wav(root / "audioset" / "clips" / "y.wav")
    (root / "meta").mkdir()
    (root / "meta" / "train.json").write_text(json.dumps({"data": [
        {"wav": "clips/x.wav", "caption": "a car passes"}, {"wav": "clips/y.wav", "caption": ""},
        {"caption": "no wav"}]}))
    (root / "dataset_root.json").write_text(json.dumps(
        {"audiocaps": "audioset", "metadata": {"path": {"audiocaps": {"train": "meta/train.json"}}}}))
    return readers.audioldm, {"dataset_root": str(root / "dataset_root.json")}, "dataset_root", 1, \
        {"no_caption": 1, "bad_row": 1}


def _folder(root):
    write_wav(root / "side" / "a.wav")
    (root / "side" / "a.txt").write_text("a soft tone\nanother way to say it\n")
    write_wav(root / "side" / "sub" / "b.flac")
    (root / "side" / "sub" / "b.txt").write_text("a flac tone")
    write_wav(root / "side" / "c.wav")  # no caption
    return readers.folder, {"path": str(root / "side")}, "path", 2, {"no_caption": 1}


def _clotho(root):
    write_wav(root / "development" / "Rain 01.wav")
    path = root / "clotho_captions_development.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        w.writerow(["Rain 01.wav", "rain, on a roof", "steady rain", "", "rain drops fall", "water drips"])
        w.writerow(["Gone.wav", "a", "b", "c", "d", "e"])
        w.writerow(["", "a", "b", "c", "d", "e"])
    # audio_dir given, so that a garbled CSV in another folder is read (without it, the missing
    # audio folder beside that CSV is what the reader reports first)
    return readers.clotho, {"csv_file": str(path), "audio_dir": str(root / "development")}, "csv_file", 1, \
        {"missing_file": 1, "bad_row": 1}


@pytest.mark.parametrize("layout", [_jsonl, _audiocaps, _audioldm, _folder, _clotho],
                         ids=["jsonl", "audiocaps", "audioldm", "folder", "clotho"])
def test_built_in_dataset_readers_conform(layout, tmp_path):
    reader, kwargs, metadata, items, skipped = layout(tmp_path)
    check_dataset_reader(reader, tmp_path, kwargs, metadata=metadata, items=items, skipped=skipped)


def test_every_registered_dataset_reader_is_checked_here():
    # webdataset reads shards as a stream (a ShardSource, not an ItemSet): tests/test_stream.py checks it
    assert sorted(e.name for e in get_registry().entries("dataset")) == \
        ["audiocaps", "audioldm", "clotho", "folder", "jsonl", "webdataset"]


def _lines(path: str):
    """A reader of 'audio<TAB>caption' lines, with the given flaw."""
    from tta_core.plugin import Collector

    out = Collector(f"lines {path}")
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        audio, caption = line.split("\t")  # a row without a tab: a raw ValueError
        out.add(id=None, audio=Path(path).parent / audio, captions=caption, where=f"{path}:{n}")
    return out.result()


def _lines_sorting_in_place(path: str):
    rows = sorted(Path(path).read_text().splitlines())
    Path(path).write_text("\n".join(rows) + "\n")
    return _lines(path)


def test_a_reader_that_breaks_the_rules_is_caught(tmp_path):
    write_wav(tmp_path / "b.wav")
    write_wav(tmp_path / "a.wav")
    meta = tmp_path / "clips.tsv"
    meta.write_text("b.wav\ta bee\na.wav\tan ant\n")
    with pytest.raises(ConformanceError, match="^_lines: read 2 items, expected 3"):
        check_dataset_reader(_lines, tmp_path, {"path": str(meta)}, metadata="path", items=3)
    with pytest.raises(ConformanceError, match="^_lines: a missing path raised FileNotFoundError"):
        check_dataset_reader(_lines, tmp_path, {"path": str(meta)}, metadata="path")
    with pytest.raises(ConformanceError, match="^_lines_sorting_in_place: changed the dataset: changed .*clips.tsv"):
        check_dataset_reader(_lines_sorting_in_place, tmp_path, {"path": str(meta)}, metadata="path")
    assert meta.read_text() == "a.wav\tan ant\nb.wav\ta bee\n"  # what the check caught
