"""The mel cache (never stale) and `tta-run RECIPE prepare` end to end, bad inputs included."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from audio_fixtures import bad_files, tone, write_jsonl, write_wav
from tta_core.cli import main
from tta_core.data.cache import FeatureCache, fingerprint, latent_cache, mel_cache, text_cache, text_key
from tta_core.data.config import AudioConfig
from tta_core.data.dataset import AudioTextDataset
from tta_datasets.readers import jsonl


def test_feature_cache_round_trip_over_shards(tmp_path):
    cache = FeatureCache(tmp_path, "mel", {"a": 1}, shard_size=2)
    arrays = {f"k{i}": np.full((3, 4), i, dtype=np.float32) for i in range(5)}
    for key, array in arrays.items():
        cache.put(key, array, frames=3)
    cache.flush()
    assert len(list(cache.dir.glob("shard-*.safetensors"))) == 3
    reopened = pickle.loads(pickle.dumps(FeatureCache(tmp_path, "mel", {"a": 1})))
    assert len(reopened) == 5 and reopened.info("k3") == {"frames": 3}
    assert all(np.array_equal(reopened.get(k), a) for k, a in arrays.items())
    assert FeatureCache(tmp_path, "mel", {"a": 2}).get("k0") is None  # other settings, other folder
    assert json.loads((cache.dir / "settings.json").read_text()) == {"a": 1}


def test_latent_and_text_caches_are_keyed_by_the_model_that_made_them(tmp_path):
    audio = AudioConfig(duration=1.0)
    a = latent_cache(tmp_path, audio, autoencoder="vae-1")
    a.put("k", np.ones((4, 2, 8), dtype=np.float32))
    a.flush()
    assert latent_cache(tmp_path, audio, "vae-1").get("k") is not None
    assert latent_cache(tmp_path, audio, "vae-2").get("k") is None  # a retrained VAE never reads old latents
    assert latent_cache(tmp_path, AudioConfig(duration=2.0), "vae-1").get("k") is None
    t = text_cache(tmp_path, "t5-small")
    t.put(text_key("a dog barks"), np.zeros((3, 8), dtype=np.float32))
    t.flush()
    assert text_key("a dog barks") in text_cache(tmp_path, "t5-small")
    assert text_key("a dog barks!") not in text_cache(tmp_path, "t5-small")


def test_fingerprint_changes_when_the_file_changes(tmp_path):
    path = write_wav(tmp_path / "x.wav", tone(0.5, seed=0))
    before = fingerprint(path)
    assert fingerprint(path) == before
    write_wav(path, tone(0.5, seed=1))  # same size, new content
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fingerprint(path) != before


def make_set(root, n=4, seconds=1.0, extra_rows=()):
    rows = []
    for i in range(n):
        write_wav(root / "audio" / f"c{i}.wav", tone(seconds, freq=300 + 150 * i, seed=i))
        rows.append({"id": f"c{i}", "audio": f"audio/c{i}.wav", "caption": f"clip {i}", "label": "x"})
    return write_jsonl(root / "manifest.jsonl", rows + list(extra_rows))


def recipe(root, manifest, audio="{sample_rate: 16000, duration: 0.5}", extra=""):
    path = root / "r.yaml"
    path.write_text(f"name: t\naudio: {audio}\ndata:\n  train: {{type: jsonl, manifest: {manifest}}}\n{extra}")
    return path


def test_prepare_builds_the_cache_and_reuses_only_what_is_still_valid(tmp_path, capsys):
    manifest = make_set(tmp_path)
    r, run = recipe(tmp_path, manifest), tmp_path / "run"
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "train (jsonl" in out and "4 rows, 4 usable, 0 skipped" in out and "4 computed, 0 reused" in out
    assert "fixed: cropped 4" in out  # 1 s clips, 0.5 s examples

    audio = AudioConfig(sample_rate=16000, duration=0.5)
    items = jsonl(str(manifest))
    cache = mel_cache(run / "cache", audio)
    assert cache.dir.parent == run / "cache" and len(cache) == 4
    cached = AudioTextDataset(items, audio, train=False, cache=cache)
    fresh = AudioTextDataset(items, audio, train=False)
    assert torch.allclose(cached[1]["mel"], fresh[1]["mel"], atol=1e-5)
    trained = [AudioTextDataset(items, audio, train=True, seed=s, cache=cache)[0]["mel"] for s in range(4)]
    assert not all(torch.equal(trained[0], t) for t in trained[1:])  # random crops from the cache

    # edit one file: only it is recomputed, and the cache serves its new content
    path, old = items[2].audio, fresh[2]["mel"]
    write_wav(path, tone(1.0, freq=3000, seed=9))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 computed, 3 reused" in out and "1 unused" in out
    new_cache = mel_cache(run / "cache", audio)
    served = AudioTextDataset(items, audio, train=False, cache=new_cache)[2]["mel"]
    assert torch.allclose(served, AudioTextDataset(items, audio, train=False)[2]["mel"], atol=1e-5)
    assert not torch.allclose(served, old, atol=1e-2)

    # a changed setting never reads the old mels
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0", "--set", "audio.normalize=true"]) == 0
    assert "4 computed, 0 reused" in capsys.readouterr().out
    assert len(list((run / "cache").glob("mel-*"))) == 2


def test_prepare_counts_every_bad_input_by_reason_and_keeps_going(tmp_path, capsys, caplog):
    bad = bad_files(tmp_path / "bad")
    write_wav(tmp_path / "stereo.wav", tone(0.4, channels=2), subtype="FLOAT")
    write_wav(tmp_path / "hifi.wav", tone(0.4, sr=44100), sr=44100)
    rows = [{"id": name, "audio": str(path), "caption": "bad"} for name, path in bad.items()]
    rows += [
        {"id": "stereo", "audio": "stereo.wav", "caption": "two channels"},
        {"id": "hifi", "audio": "hifi.wav", "caption": "44.1 kHz"},
        {"id": "ghost", "audio": "audio/ghost.wav", "caption": "no such file"},
        {"id": "mute", "audio": "audio/c0.wav", "caption": ""},
        {"id": "c1", "audio": "audio/c0.wav", "caption": "duplicate id"},
        "{broken json",
    ]
    manifest = make_set(tmp_path, n=2, extra_rows=rows)
    r, run = recipe(tmp_path, manifest), tmp_path / "run"
    with caplog.at_level("WARNING", logger="tta.data"):
        assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "14 rows, 4 usable, 10 skipped" in out
    assert ("skipped: bad_row 1, duplicate_id 1, empty 1, missing_file 1, no_caption 1, non_finite 2, "
            "too_short 1, unreadable 2") in out
    assert "mixed_to_mono 1" in out and "resampled 1" in out and "padded 2" in out
    assert str(bad["non_finite"]) in caplog.text and "non_finite" in caplog.text
    report = json.loads((run / "cache" / "report.json").read_text())["splits"][0]
    assert report["kept"] == 4 and report["skipped"]["unreadable"] == 2
    assert str(bad["empty"]) in report["skipped_where"]["empty"]

    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0", "--strict"]) == 1
    assert "10 bad item(s) and --strict" in capsys.readouterr().err
    assert main([str(r), "prepare", "--run-dir", str(run), "--workers", "0", "--set", "audio.on_bad_item=fail"]) == 1
    assert "audio.on_bad_item is 'fail'" in capsys.readouterr().err


def test_prepare_fails_only_when_nothing_is_usable(tmp_path, capsys):
    bad = bad_files(tmp_path / "bad")
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"audio": str(p), "caption": "x", "id": n} for n, p in bad.items()])
    r = recipe(tmp_path, manifest)
    assert main([str(r), "prepare", "--run-dir", str(tmp_path / "run"), "--workers", "0"]) == 1
    captured = capsys.readouterr()
    assert "6 rows, 0 usable, 6 skipped" in captured.out
    assert "nothing usable in train" in captured.err


def test_prepare_without_data_section_teaches_the_shape(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("name: t\naudio: {duration: 1.0}\n")
    assert main([str(r), "prepare", "--run-dir", str(tmp_path / "run")]) == 2
    assert "has no data: section" in capsys.readouterr().err


def test_prepare_run_dir_defaults_to_runs_recipe_name(tmp_path, capsys, monkeypatch):
    manifest = make_set(tmp_path, n=2)
    r = recipe(tmp_path, manifest)
    monkeypatch.chdir(tmp_path)
    assert main([str(r), "prepare", "--workers", "0", "--no-cache"]) == 0
    assert "2 usable" in capsys.readouterr().out
    assert (tmp_path / "runs" / "t" / "cache" / "report.json").is_file()
    assert not list((tmp_path / "runs" / "t" / "cache").glob("mel-*"))
