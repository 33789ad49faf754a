"""Every reader on small layouts written here, the bad-row rules, and training examples."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from audio_fixtures import bad_files, tone, write_jsonl, write_wav
from tta_core.data.config import AudioConfig
from tta_core.data.dataset import AudioTextDataset, collate, make_loader
from tta_core.discovery import get_registry
from tta_core.errors import DataError
from tta_datasets import readers


def test_readers_are_registered_dataset_plugins():
    registry = get_registry()
    for name in ("jsonl", "audiocaps", "audioldm", "folder", "clotho"):
        entry = registry.get("dataset", name)
        assert entry.origin.plugin == "datasets"
        assert entry.load() is getattr(readers, name)


def test_jsonl_reader_and_its_bad_row_rules(tmp_path, caplog):
    for name in ("a", "b", "c", "d"):
        write_wav(tmp_path / "audio" / f"{name}.wav")
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "audio": "audio/a.wav", "caption": "a tone", "label": "beep", "pitch_hz": 440},
        {"audio": "audio/b.wav", "caption": ["first", "  ", "second "]},
        {"id": "gone", "audio": "audio/missing.wav", "caption": "nothing here"},
        {"id": "c", "audio": "audio/c.wav", "caption": "   "},
        {"id": "d", "audio": "audio/d.wav"},
        {"id": "a", "audio": "audio/d.wav", "caption": "same id as the first"},
        "{not json",
        {"caption": "no audio field"},
        "",
    ])
    with caplog.at_level("WARNING", logger="tta.data"):
        items = readers.jsonl(str(manifest))
    assert [i.id for i in items] == ["a", "b"]
    a, b = items
    assert a.audio == tmp_path / "audio" / "a.wav" and a.captions == ("a tone",) and a.label == "beep"
    assert a.meta == {"pitch_hz": 440}
    assert b.captions == ("first", "second") and b.label is None  # id defaults to the file stem
    assert items.skipped == {"missing_file": 1, "no_caption": 2, "duplicate_id": 1, "bad_row": 2}
    assert items.rows == 8
    assert items.skipped_where["missing_file"] == [f"{manifest}:3"]
    assert f"{manifest}:6" in caplog.text and "duplicate_id" in caplog.text


def test_jsonl_missing_manifest_is_an_error_that_names_it(tmp_path):
    with pytest.raises(DataError, match="manifest not found: .*nope.jsonl"):
        readers.jsonl(str(tmp_path / "nope.jsonl"))


def test_jsonl_pools_several_manifests_made_alike_without_id_clashes(tmp_path):
    for folder in ("new", "replay"):
        write_wav(tmp_path / folder / "audio" / "x.wav")
        write_jsonl(tmp_path / folder / "manifest.jsonl", [
            {"id": "sounds-0", "audio": "audio/x.wav", "caption": f"a {folder} sound", "label": folder},
            {"audio": "audio/x.wav", "caption": "no id"},
        ])
    manifests = [str(tmp_path / f / "manifest.jsonl") for f in ("new", "replay")]
    items = readers.jsonl(manifests)
    assert [i.id for i in items] == ["new/sounds-0", "new/x", "replay/sounds-0", "replay/x"]
    assert [i.label for i in items] == ["new", None, "replay", None]
    assert items[2].audio == tmp_path / "replay" / "audio" / "x.wav"
    assert [i.id for i in readers.jsonl(manifests[0])] == ["sounds-0", "x"]  # one manifest: ids as written
    with pytest.raises(DataError, match="manifest not found: .*nope.jsonl"):
        readers.jsonl([manifests[0], str(tmp_path / "nope.jsonl")])


def test_audiocaps_amphion_layout(tmp_path):
    root = tmp_path / "AudioCaps"
    for uid in ("u1", "u2"):
        write_wav(root / "wav" / f"{uid}.wav")
    meta = root / "train.json"
    meta.write_text(json.dumps([
        {"Dataset": "AudioCaps", "Uid": "u1", "Caption": "a dog barks"},
        {"Dataset": "AudioCaps", "Uid": "u2", "Caption": "rain falls"},
        {"Dataset": "AudioCaps", "Uid": "u1", "Caption": "a dog barking twice"},
        {"Dataset": "AudioCaps", "Uid": "u3", "Caption": "no file"},
        {"Dataset": "AudioCaps", "Caption": "no uid"},
    ]))
    items = readers.audiocaps(str(meta))
    assert [i.id for i in items] == ["AudioCaps_u1", "AudioCaps_u2"]
    assert items[0].captions == ("a dog barks", "a dog barking twice")  # rows of one Uid merge
    assert items[0].audio == root / "wav" / "u1.wav"
    assert items.skipped == {"missing_file": 1, "bad_row": 1}


def test_audioldm_dataset_root_layout(tmp_path):
    write_wav(tmp_path / "audioset" / "clips" / "x.wav")
    write_wav(tmp_path / "audioset" / "clips" / "y.wav")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.json").write_text(json.dumps({"data": [
        {"wav": "clips/x.wav", "caption": "a car passes", "labels": "/m/0k4j"},
        {"wav": "clips/y.wav", "caption": ""},
        {"caption": "no wav"},
    ]}))
    (tmp_path / "meta" / "val.json").write_text(json.dumps({"data": [{"wav": "clips/y.wav", "caption": "birds"}]}))
    root = tmp_path / "dataset_root.json"
    root.write_text(json.dumps({
        "audiocaps": "audioset", "comments": {},
        "metadata": {"path": {"audiocaps": {"train": "meta/train.json", "val": "meta/val.json"}}},
    }))
    train = readers.audioldm(str(root))
    assert [(i.id, i.captions, i.label) for i in train] == [("audiocaps/clips/x", ("a car passes",), "/m/0k4j")]
    assert train[0].audio == tmp_path / "audioset" / "clips" / "x.wav"
    assert train.skipped == {"no_caption": 1, "bad_row": 1}
    assert [i.captions for i in readers.audioldm(str(root), split="val")] == [("birds",)]
    with pytest.raises(DataError, match="has no split 'test'. Splits: train, val"):
        readers.audioldm(str(root), split="test")
    with pytest.raises(DataError, match="dataset 'clotho' needs an entry"):
        readers.audioldm(str(root), datasets=["clotho"])


def test_folder_with_sidecar_captions_and_with_a_parallel_text_folder(tmp_path):
    side = tmp_path / "side"
    write_wav(side / "a.wav")
    (side / "a.txt").write_text("a soft tone\nanother way to say it\n")
    write_wav(side / "sub" / "b.flac")
    (side / "sub" / "b.txt").write_text("a flac tone")
    write_wav(side / "c.wav")  # no caption
    items = readers.folder(str(side))
    assert [(i.id, i.captions) for i in items] == [("a", ("a soft tone", "another way to say it")), ("sub/b", ("a flac tone",))]
    assert items.skipped == {"no_caption": 1}

    write_wav(tmp_path / "audio" / "x.wav")
    (tmp_path / "text_descriptions").mkdir()
    (tmp_path / "text_descriptions" / "x.txt").write_text("from the parallel folder")
    items = readers.folder(str(tmp_path / "audio"), text_dir=str(tmp_path / "text_descriptions"))
    assert [(i.id, i.captions) for i in items] == [("x", ("from the parallel folder",))]


def test_clotho_csv_beside_its_audio_folder(tmp_path):
    write_wav(tmp_path / "development" / "Rain 01.wav")
    path = tmp_path / "clotho_captions_development.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        w.writerow(["Rain 01.wav", "rain, on a roof", "steady rain", "", "rain drops fall", "water drips"])
        w.writerow(["Gone.wav", "a", "b", "c", "d", "e"])
    items = readers.clotho(str(path))
    assert len(items) == 1 and items[0].id == "Rain 01.wav"
    assert items[0].captions == ("rain, on a roof", "steady rain", "rain drops fall", "water drips")
    assert items.skipped == {"missing_file": 1}


def jsonl_set(tmp_path, n=6, seconds=1.0):
    rows = []
    for i in range(n):
        write_wav(tmp_path / f"c{i}.wav", tone(seconds, freq=200 + 100 * i, seed=i))
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "caption": [f"clip {i} take {k}" for k in range(4)],
                     "label": f"l{i % 2}"})
    return readers.jsonl(str(write_jsonl(tmp_path / "m.jsonl", rows)))


def test_examples_have_the_documented_shapes_and_draws_follow_seed_and_epoch(tmp_path):
    items = jsonl_set(tmp_path)
    audio = AudioConfig(duration=0.5)
    ds = AudioTextDataset(items, audio, train=True, seed=3, wave=True)
    ex = ds[1]
    assert ex["mel"].shape == (1, 50, 64) and ex["wave"].shape == (8000,)
    assert ex["id"] == "c1" and ex["label"] == "l1" and ex["caption"] in items[1].captions
    again = AudioTextDataset(items, audio, train=True, seed=3, wave=True)[1]
    assert again["caption"] == ex["caption"] and torch.equal(again["wave"], ex["wave"])
    draws = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        draws.add((ds[1]["caption"], float(ds[1]["wave"][0])))
    assert len({c for c, _ in draws}) > 1 and len({w for _, w in draws}) > 1  # new caption and crop per epoch
    ev = AudioTextDataset(items, audio, train=False, wave=True)  # evaluation crops from the start
    import soundfile as sf

    assert np.allclose(ev[1]["wave"].numpy(), sf.read(items[1].audio, dtype="float32")[0][:8000])


def test_loader_with_workers_batches_and_drops_bad_files(tmp_path):
    items = jsonl_set(tmp_path, n=5)
    bad = bad_files(tmp_path / "bad")["non_finite"]
    items.items[2] = dataclasses.replace(items[2], audio=bad)  # as if the file went bad after listing
    audio = AudioConfig(duration=0.5)
    loader = make_loader(AudioTextDataset(items, audio, train=False), batch_size=5, workers=2)
    (batch,) = list(loader)
    assert batch["mel"].shape == (4, 1, 50, 64)
    assert batch["id"] == ["c0", "c1", "c3", "c4"] and batch["index"].tolist() == [0, 1, 3, 4]
    assert collate([None, None]) is None
    strict = AudioTextDataset(items, AudioConfig(duration=0.5, on_bad_item="fail"), train=False)
    with pytest.raises(DataError, match="non_finite"):
        strict[2]
