"""`tta-run RECIPE shard`: a recipe's datasets as WebDataset tar shards, checked by prepare's rules."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tta_core.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(sets, tmp_path):
    """The 16 clips of sets/a, plus a row naming a missing file and one naming a corrupt file."""
    root = tmp_path / "corpus"
    shutil.copytree(sets / "a", root)
    (root / "audio" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 30)
    with open(root / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"audio": "audio/missing.wav", "caption": "gone"}) + "\n")
        f.write(json.dumps({"id": "bad", "audio": "audio/broken.wav", "caption": "broken"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {REPO / 'recipes' / 'quickstart.yaml'}\nname: sharded\n"
                      f"data:\n  train: {{type: jsonl, manifest: {root / 'manifest.jsonl'}}}\n"
                      f"  valid: {{type: jsonl, manifest: {sets / 'b' / 'manifest.jsonl'}}}\n")
    return recipe, root


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_hold_every_usable_clip_losslessly_with_its_captions(corpus, tmp_path, capsys):
    recipe, root = corpus
    out = tmp_path / "shards"
    assert main([str(recipe), "shard", "--out", str(out), "--shard-size", "5", "--with-mel", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "18 rows, 16 usable, 2 skipped" in printed and "missing_file 1" in printed and "unreadable 1" in printed
    index = json.loads((out / "index.json").read_text())
    train = index["splits"]["train"]
    assert train["items"] == 16 and [s["items"] for s in train["shards"]] == [5, 5, 5, 1]
    assert [s["file"] for s in train["shards"]] == [f"train-{k:06d}.tar" for k in range(4)]
    assert index["splits"]["valid"]["items"] == 16 and train["report"]["skipped"] == {"missing_file": 1, "unreadable": 1}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json"] + [s["file"] for split in index["splits"].values() for s in split["shards"]])

    rows = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()][:16]
    members = {}
    for shard in train["shards"]:
        members.update(_members(out / shard["file"]))
    keys = sorted({name.split(".", 1)[0] for name in members})
    assert len(keys) == 16 and all({f"{k}.flac", f"{k}.json", f"{k}.mel.npy"} <= set(members) for k in keys)
    from tta_core.data.audio import load_clip
    from tta_core.data.mel import clip_mel
    from tta_core.recipe import load_recipe

    audio = load_recipe(recipe).audio
    for key, row in zip(keys, rows):
        record = json.loads(members[f"{key}.json"])
        assert record["id"] == Path(row["audio"]).stem and record["text"] == [row["caption"]]
        assert record["label"] == row["label"]
        stored, rate = soundfile.read(io.BytesIO(members[f"{key}.flac"]), dtype="int16")
        source, source_rate = soundfile.read(root / row["audio"], dtype="int16")
        assert rate == source_rate and np.array_equal(stored, source)  # lossless
        mel = np.load(io.BytesIO(members[f"{key}.mel.npy"]))
        np.testing.assert_array_equal(mel, clip_mel(load_clip(root / row["audio"], audio).wave, audio).numpy())


def test_the_webdataset_library_reads_the_shards(corpus, tmp_path):
    wds = pytest.importorskip("webdataset")
    recipe, root = corpus
    out = tmp_path / "shards"
    assert main([str(recipe), "shard", "--out", str(out), "--split", "train", "--shard-size", "7"]) == 0
    urls = sorted(str(p) for p in out.glob("train-*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == 16 and all({"flac", "json"} <= set(s) for s in samples)
    assert [s["json"]["text"][0] for s in samples] == \
        [json.loads(x)["caption"] for x in (root / "manifest.jsonl").read_text().splitlines()[:16]]
    assert not (out / "valid-000000.tar").exists()


def test_the_same_input_gives_the_same_bytes(corpus, tmp_path):
    recipe, _ = corpus
    for name in ("a", "b"):
        assert main([str(recipe), "shard", "--out", str(tmp_path / name), "--split", "valid"]) == 0
    assert (tmp_path / "a" / "valid-000000.tar").read_bytes() == (tmp_path / "b" / "valid-000000.tar").read_bytes()


def test_refusals_write_nothing(corpus, tmp_path, capsys):
    recipe, _ = corpus
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    assert main([str(recipe), "shard", "--out", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert main([str(recipe), "shard", "--out", str(tmp_path / "x"), "--split", "test"]) == 2
    assert "train, valid" in capsys.readouterr().err
    assert main([str(recipe), "shard", "--out", str(tmp_path / "y"), "--strict"]) == 1
    assert "2 bad item(s) and --strict" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folder beside
