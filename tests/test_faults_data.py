"""Data faults a user meets: damaged caches, a folder where a manifest belongs, bad files
logged once per run, and progress that shows where no progress bar can."""

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_fixtures import bad_files, tone, write_jsonl, write_wav
from tta_core.cli import main
from tta_core.data.cache import DamagedCache, FeatureCache, mel_cache
from tta_core.data.config import AudioConfig
from tta_core.data.dataset import AudioTextDataset
from tta_core.errors import DataError, UsageError
from tta_core.progress import Progress, duration, progress
from tta_datasets import readers

AUDIO = "{sample_rate: 16000, duration: 0.5}"


def make_set(root: Path, n: int = 4, bad: Path | None = None) -> Path:
    rows = []
    for i in range(n):
        write_wav(root / "audio" / f"c{i}.wav", tone(1.0, freq=300 + 150 * i, seed=i))
        rows.append({"id": f"c{i}", "audio": f"audio/c{i}.wav", "caption": f"clip {i}"})
    if bad is not None:
        rows.append({"id": "bad", "audio": str(bad), "caption": "a broken file"})
    return write_jsonl(root / "manifest.jsonl", rows)


def write_recipe(root: Path, manifest, extra: str = "") -> Path:
    path = root / "r.yaml"
    path.write_text(f"name: t\naudio: {AUDIO}\ndata:\n  train: {{type: jsonl, manifest: {manifest}}}\n{extra}")
    return path


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under ``root`` (the user's files), except under ``skip`` (the run
    folder) and ``site`` (the test plugin's folder, where Python writes bytecode)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not {skip, root / "site"} & set(p.parents):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- damaged caches --------------------------------------------------------------------------


def test_prepare_rebuilds_a_truncated_mel_shard_and_says_so(tmp_path, capsys):
    manifest = make_set(tmp_path)
    r, run = write_recipe(tmp_path, manifest), tmp_path / "run"
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    capsys.readouterr()
    audio = AudioConfig(sample_rate=16000, duration=0.5)
    (shard,) = mel_cache(run / "cache", audio).dir.glob("shard-*.safetensors")
    truncate(shard)
    before = snapshot(tmp_path, skip=run)

    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{shard} is truncated" in out and "its 4 entries are computed again" in out
    assert "0 computed, 0 reused, 4 rebuilt (damaged)" in out
    assert "4 reused" not in out
    assert snapshot(tmp_path, skip=run) == before  # manifest and audio untouched

    cache = mel_cache(run / "cache", audio)
    assert cache.damage(deep=True) == [] and len(cache) == 4
    items = readers.jsonl(str(manifest))
    cached = AudioTextDataset(items, audio, train=False, cache=cache)[1]["mel"]
    assert torch.allclose(cached, AudioTextDataset(items, audio, train=False)[1]["mel"], atol=1e-5)
    report = json.loads((run / "cache" / "report.json").read_text())["splits"][0]
    assert report["mel_rebuilt"] == 4 and report["mel_reused"] == 0

    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    assert "0 computed, 4 reused" in capsys.readouterr().out  # repaired for good


def test_prepare_rebuilds_a_shard_whose_bytes_changed_and_an_unreadable_index(tmp_path, capsys):
    manifest = make_set(tmp_path, n=2)
    r, run = write_recipe(tmp_path, manifest), tmp_path / "run"
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    cache = mel_cache(run / "cache", AudioConfig(sample_rate=16000, duration=0.5))
    (shard,) = cache.dir.glob("shard-*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same length, a flipped byte: only the sha256 sees it
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    assert "sha256 differs" in capsys.readouterr().out

    (cache.dir / "index.json").write_text('{"format": 2, "shards": {')
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "index.json is unreadable" in out and "2 computed, 0 reused" in out
    assert len(list(cache.dir.glob("shard-*.safetensors"))) == 1


TOY = '''
import torch
from tta_core.plugin import hookimpl


class Mel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))


class MelObjective:
    """Trains one scalar on mels read the way every mel stage reads them."""

    def setup(self, ctx):
        self.net = ctx.components["net"]

    def train_dataset(self, ctx):
        from tta_core.training.datasets import training_dataset
        return training_dataset(ctx, mel=True)

    def collate(self, items):
        from tta_core.data.dataset import collate
        return collate(items)

    def parameter_groups(self, ctx):
        return {"main": list(self.net.parameters())}

    def losses(self, batch, step, generator):
        return {"main": (self.net.scale * batch["mel"]).mean() ** 2}


@hookimpl
def tta_register(register):
    register("denoiser", "toy_mel", Mel)
    register("objective", "toy_mel_objective", MelObjective)
'''

STAGE = """components:
  net: {{type: toy_mel}}
train:
  - {{name: fit, objective: {{type: toy_mel_objective}}, trains: [net], max_steps: {steps}, batch_size: 2,
     num_workers: {workers}, checkpoint_every: 100}}
"""


def train(recipe: Path, run: Path) -> int:
    return main([str(recipe), "train", "--run-dir", str(run), "--no-progress", "--device", "cpu"])


def test_train_with_a_truncated_mel_shard_fails_naming_it_until_prepare_rebuilds_it(tmp_path, fake_dists, capsys):
    fake_dists("tta-toymel", "1.0", {"toymel": TOY})
    manifest = make_set(tmp_path)
    r = write_recipe(tmp_path, manifest, STAGE.format(steps=2, workers=0))
    run = tmp_path / "run"
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    (shard,) = (run / "cache").glob("mel-*/shard-*.safetensors")
    truncate(shard)
    capsys.readouterr()
    before = snapshot(tmp_path, skip=run)

    assert train(r, run) == 1
    err = capsys.readouterr().err
    assert f"{shard} is truncated" in err
    assert f"run `tta-run {r} prepare --run-dir {run}` to rebuild it" in err
    assert "SafetensorError" not in err and "Traceback" not in err
    assert snapshot(tmp_path, skip=run) == before
    assert not (run / "fit" / "checkpoints").exists() or not list((run / "fit" / "checkpoints").glob("step-*"))

    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    assert train(r, run) == 0
    assert snapshot(tmp_path, skip=run) == before


def test_a_reader_names_the_damaged_shard_instead_of_a_bare_safetensors_error(tmp_path):
    cache = FeatureCache(tmp_path, "latent", {"a": 1}, shard_size=2, rebuilt_by="train")
    for i in range(4):
        cache.put(f"k{i}", np.full((2, 3), i, dtype=np.float32))
    cache.flush()
    first = cache.dir / "shard-00000.safetensors"
    truncate(first)
    reader = FeatureCache(tmp_path, "latent", {"a": 1})
    assert np.array_equal(reader.get("k3"), np.full((2, 3), 3))  # the other shard still serves
    with pytest.raises(DamagedCache, match=f"{first} is truncated") as info:
        reader.get("k0")
    assert info.value.exit_code == 1
    with pytest.raises(DataError, match="tta-run r.yaml prepare"):
        mel_like = FeatureCache(tmp_path, "latent", {"a": 1})
        mel_like.require_intact("r.yaml")


def test_drop_damaged_drops_a_key_with_its_parts_and_the_stage_encodes_them_again(tmp_path):
    from tta_core.training.caching import fill_latent_cache

    class Encoder:
        domain = "waveform"

        def encode_moments(self, x):
            return x[..., ::4], x[..., ::4].abs() + 0.1

    items = readers.jsonl(str(make_set(tmp_path / "data", n=3)))
    audio = AudioConfig(sample_rate=16000, duration=0.5)
    cache = FeatureCache(tmp_path / "cache", "latent", {"a": 1}, shard_size=1, rebuilt_by="train")
    # a latent and its std in shards of their own (put flushes each; a cache filled in blocks
    # keeps a clip's parts in one shard, an older one need not)
    from tta_core.data.cache import fingerprint

    for item in items:
        key = fingerprint(item.audio)
        cache.put(key + ".std", np.ones((1, 2000), dtype=np.float32))
        cache.put(key, np.zeros((1, 2000), dtype=np.float32), samples=8000)
    index = json.loads((cache.dir / "index.json").read_text())
    std_key = next(k for k in index["items"] if k.endswith(".std"))
    truncate(cache.dir / index["items"][std_key]["shard"])  # only the .std part of one clip

    reopened = FeatureCache(tmp_path / "cache", "latent", {"a": 1}, shard_size=1, rebuilt_by="train")
    (damage,) = reopened.drop_damaged()
    assert damage.keys == {std_key}
    base = std_key.removesuffix(".std")
    assert base not in reopened and std_key not in reopened  # never a mean without its std
    counts = fill_latent_cache(reopened, Encoder(), items, audio, device="cpu", progress=False)
    assert counts == {"encoded": 1, "reused": 2, "bad": 0}
    fresh = FeatureCache(tmp_path / "cache", "latent", {"a": 1})
    assert fresh.damage(deep=True) == [] and fresh.get(std_key) is not None


def test_an_interrupted_shard_write_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    from tta_core.data import cache as cache_module

    cache = FeatureCache(tmp_path, "mel", {"a": 1})
    cache.put("k0", np.ones((2, 2), dtype=np.float32))
    cache.flush()
    real = cache_module.atomic_write

    def cut(path, data):
        if Path(path).name.startswith("shard-"):
            Path(path).with_name(f".{Path(path).name}.tmp-1").write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(cache_module, "atomic_write", cut)
    cache.put("k1", np.ones((2, 2), dtype=np.float32))
    with pytest.raises(KeyboardInterrupt):
        cache.flush()
    reopened = FeatureCache(tmp_path, "mel", {"a": 1})
    assert "k1" not in reopened and reopened.damage(deep=True) == []
    assert [p.name for p in reopened.dir.glob("shard-*.safetensors")] == ["shard-00000.safetensors"]


def test_an_index_from_before_shard_records_is_still_checked(tmp_path):
    from safetensors.numpy import save

    cache = FeatureCache(tmp_path, "mel", {"a": 1})
    cache.dir.mkdir(parents=True)
    (cache.dir / "shard-00000.safetensors").write_bytes(save({"k": np.ones((4, 4), dtype=np.float32)}))
    (cache.dir / "index.json").write_text(json.dumps({"k": {"shard": "shard-00000.safetensors", "samples": 4}}))
    assert cache.damage() == [] and cache.info("k") == {"samples": 4}
    truncate(cache.dir / "shard-00000.safetensors")
    cache.reload()
    (damage,) = cache.damage()
    assert "truncated" in damage.problem and damage.keys == {"k"}


# -- a folder where a file belongs -----------------------------------------------------------


def test_a_manifest_that_is_a_folder_is_a_usage_error_that_names_the_file_inside(tmp_path, capsys):
    data = tmp_path / "data"
    make_set(data)
    r, run = write_recipe(tmp_path, data), tmp_path / "run"
    before = snapshot(tmp_path)
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"data.train: manifest {data} is a folder; expected a JSON-lines file" in err
    assert f"Did you mean {data / 'manifest.jsonl'}?" in err
    assert "not found" not in err
    assert not run.exists() and snapshot(tmp_path) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    r = write_recipe(tmp_path, empty)
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"manifest {empty} is a folder; expected a JSON-lines file" in err and "Did you mean" not in err
    assert not run.exists()


def test_train_on_a_manifest_that_is_a_folder_exits_2_with_the_same_message(tmp_path, fake_dists, capsys):
    fake_dists("tta-toymel", "1.0", {"toymel": TOY})
    data = tmp_path / "data"
    make_set(data)
    r = write_recipe(data, data, STAGE.format(steps=2, workers=0))
    before = snapshot(data)
    assert train(r, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"data.train: manifest {data} is a folder" in err and f"Did you mean {data / 'manifest.jsonl'}?" in err
    assert snapshot(data) == before
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]  # no file written


def test_the_other_readers_tell_a_folder_from_a_file(tmp_path):
    (tmp_path / "AudioCaps").mkdir()
    (tmp_path / "AudioCaps" / "train.json").write_text("[]")
    with pytest.raises(UsageError, match=r"AudioCaps metadata .*AudioCaps is a folder; expected a JSON file\. "
                                         r"Did you mean .*train\.json\?"):
        readers.audiocaps(str(tmp_path / "AudioCaps"))
    with pytest.raises(UsageError, match=r"dataset_root\.json .* is a folder"):
        readers.audioldm(str(tmp_path))
    clip = write_wav(tmp_path / "one.wav")
    with pytest.raises(UsageError, match=r"audio folder .*one\.wav is a file; expected a folder"):
        readers.folder(str(clip))
    with pytest.raises(UsageError, match="Clotho captions CSV .* is a folder; expected a CSV file"):
        readers.clotho(str(tmp_path))
    with pytest.raises(DataError, match="manifest not found"):  # missing stays a data error
        readers.jsonl(str(tmp_path / "nope.jsonl"))


# -- bad files: once per run -----------------------------------------------------------------


def test_a_bad_file_is_logged_once_across_epochs_and_workers(tmp_path, fake_dists, capsys):
    fake_dists("tta-toymel", "1.0", {"toymel": TOY})
    data = tmp_path / "data"
    bad = bad_files(data / "bad")["non_finite"]
    manifest = make_set(data, n=3, bad=bad)
    # 4 items, batches of 2: 8 steps are 4 epochs, read by 2 workers
    r = write_recipe(data, manifest, STAGE.format(steps=8, workers=2))
    before = snapshot(data)
    log_file = tmp_path / "data.log"
    handler = logging.FileHandler(log_file)  # forked workers inherit it; caplog sees only this process
    logger = logging.getLogger("tta.data")
    logger.addHandler(handler)
    try:
        assert train(r, tmp_path / "run") == 0
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = [line for line in log_file.read_text().splitlines() if str(bad) in line]
    assert len(lines) == 1, lines
    assert "non_finite" in lines[0] and "each is logged once" in lines[0]
    assert snapshot(data) == before


def test_the_dataset_counts_each_bad_file_once(tmp_path):
    bad = bad_files(tmp_path / "bad")
    items = readers.jsonl(str(make_set(tmp_path, n=2, bad=bad["non_finite"])))
    data = AudioTextDataset(items, AudioConfig(duration=0.5), train=True)
    for epoch in range(3):
        data.set_epoch(epoch)
        assert data[2] is None
    assert data.bad_count == 1


# -- progress --------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_off_a_terminal_writes_a_line_every_few_seconds_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    with Progress(100, "prepare", "files", every=10, stream=out, tty=False, clock=clock) as bar:
        for _ in range(100):
            clock.t += 0.25
            bar.update()
    assert out.getvalue().splitlines() == [
        "prepare: 0/100 files (0%)",
        "prepare: 40/100 files (40%), 4 files/s, ETA 15 s",
        "prepare: 80/100 files (80%), 4 files/s, ETA 5 s",
        "prepare: 100/100 files (100%), 4 files/s, done in 25 s",
    ]


def test_progress_stopped_by_an_error_says_so_and_unknown_totals_have_no_eta():
    clock, out = Clock(), io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(None, "vocode", "clips", every=5, stream=out, tty=False, clock=clock) as bar:
            clock.t += 6
            bar.update(30)
            raise RuntimeError("boom")
    assert out.getvalue().splitlines() == ["vocode: 0 clips", "vocode: 30 clips, 5 clips/s",
                                           "vocode: 30 clips, 5 clips/s, stopped in 6 s"]
    assert duration(200) == "3 min 20 s" and duration(7500) == "2 h 05 min"


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    for _ in progress(range(7), "sample", "steps", stream=out):
        pass
    text = out.getvalue()
    assert "\r" in text and "sample: 100%" in text and "7/7" in text and "step/s" in text


def test_disabled_progress_writes_nothing(capsys):
    out = io.StringIO()
    with Progress(10, "x", stream=out, tty=False, disable=True) as bar:
        bar.update(10)
    with Progress(10, "y", disable=True) as bar:
        bar.update(10)
    assert out.getvalue() == "" and capsys.readouterr() == ("", "")


def test_prepare_off_a_terminal_prints_progress_lines(tmp_path, capsys):
    manifest = make_set(tmp_path)
    r = write_recipe(tmp_path, manifest)
    assert main([str(r), "prepare", "--run-dir", str(tmp_path / "run"), "--workers", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "prepare train: 0/4 files (0%)" in err
    (last,) = [line for line in err if line.startswith("prepare train: 4/4 files (100%), ")]
    assert "files/s, done in" in last


def test_progress_interval_comes_from_the_environment_and_is_range_checked(monkeypatch):
    clock, out = Clock(), io.StringIO()
    monkeypatch.setenv("TTA_PROGRESS_EVERY", "2")
    with Progress(10, "encode", "clips", stream=out, tty=False, clock=clock) as bar:
        for _ in range(10):
            clock.t += 1
            bar.update()
    assert len(out.getvalue().splitlines()) == 1 + 5 + 1  # start, every 2 s of 10 s, end
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("TTA_PROGRESS_EVERY", bad)
        with pytest.raises(UsageError, match="TTA_PROGRESS_EVERY must be a positive number of seconds"):
            Progress(10, "encode", stream=io.StringIO(), tty=False)


def test_synth_into_a_folder_holding_a_set_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "audio").mkdir(parents=True)
    (out / "manifest.jsonl").write_text('{"id": "a", "audio": "audio/a.wav", "caption": "my own recording"}\n')
    (out / "audio" / "a.wav").write_bytes(b"RIFF-mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["synth", "sounds", "--out", str(out), "--n", "8"]) == 2
    err = capsys.readouterr().err
    assert "already holds a data set" in err and "left as it is" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["synth", "sounds", "--out", str(out), "--n", "8", "--duration", "0.5", "--overwrite"]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 8
    assert main(["synth", "sounds", "--out", str(tmp_path / "new"), "--n", "0"]) == 2
    assert "argument --n: must be at least 1" in capsys.readouterr().err
