"""The synthetic sets: deterministic per seed, balanced, captioned, and telling their kinds apart."""

import functools
import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from tta_core.cli import main
from tta_core.data.config import AudioConfig
from tta_core.data.mel import LogMel
from tta_core.synth import birds, sounds, write_set
from tta_datasets.readers import jsonl


def read_dir(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_synth_cli_writes_a_readable_set_deterministically(tmp_path, capsys):
    assert main(["synth", "sounds", "--out", str(tmp_path / "a"), "--n", "16", "--seed", "7", "--duration", "1"]) == 0
    assert "wrote 16 sounds clips" in capsys.readouterr().out
    assert main(["synth", "sounds", "--out", str(tmp_path / "b"), "--n", "16", "--seed", "7", "--duration", "1"]) == 0
    assert main(["synth", "sounds", "--out", str(tmp_path / "c"), "--n", "16", "--seed", "8", "--duration", "1"]) == 0
    a, b, c = (read_dir(tmp_path / x) for x in "abc")
    assert a == b  # same seed, same bytes
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".wav"))
    items = jsonl(str(tmp_path / "a" / "manifest.jsonl"))
    assert len(items) == 16 and not items.skipped
    assert Counter(i.label for i in items) == {label: 2 for label in sounds.LABELS}
    data, sr = sf.read(items[0].audio)
    info = sf.info(str(items[0].audio))
    assert sr == 16000 and data.shape == (16000,) and info.subtype == "PCM_16" and info.channels == 1


def test_synth_labels_chooses_the_kinds_including_ones_the_default_set_lacks(tmp_path, capsys):
    assert set(sounds.EXTRA_LABELS) >= {"siren", "drips"} and not set(sounds.EXTRA_LABELS) & set(sounds.LABELS)
    out = tmp_path / "new"
    assert main(["synth", "sounds", "--out", str(out), "--n", "6", "--labels", "siren, drips", "--duration", "1"]) == 0
    items = jsonl(str(out / "manifest.jsonl"))
    assert Counter(i.label for i in items) == {"siren": 3, "drips": 3}
    assert all(i.captions[0] in sounds.CAPTIONS[i.label] for i in items)
    for bad in ("siren,bark", "siren,siren", ","):
        assert main(["synth", "sounds", "--out", str(tmp_path / "bad"), "--n", "4", "--labels", bad]) == 2
        err = capsys.readouterr().err
        assert "--labels takes distinct labels of the sounds set" in err and "siren, drips" in err
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_synth_rejects_nonsense_counts(tmp_path, capsys):
    assert main(["synth", "birds", "--out", str(tmp_path), "--n", "0"]) == 2
    assert "argument --n: must be at least 1" in capsys.readouterr().err


def test_every_sound_kind_has_several_captions_and_random_parameters():
    for label, captions in sounds.CAPTIONS.items():
        assert len(set(captions)) >= 4, label
    first = [sounds.make(i, 0, 16000, 16000)[1] for i in (0, 8)]  # two low hums
    assert first[0]["label"] == first[1]["label"] == "low_hum"
    assert first[0]["pitch_hz"] != first[1]["pitch_hz"] and 100 <= first[0]["pitch_hz"] <= 250


def _features(make, n, seed):
    mel = LogMel(AudioConfig(duration=2.0))
    feats, labels = [], []
    for i in range(n):
        wave, fields = make(i, seed, 32000, 16000)
        m = mel(torch.from_numpy(wave))[0, 0].numpy()  # [T, 64]
        peak = m.argmax(1).astype(float)
        loud = m.max(1) > m.max() - 3
        t = np.arange(len(peak))[loud]
        slope = np.polyfit(t, peak[loud], 1)[0] if loud.sum() > 2 else 0.0
        feats.append(np.concatenate([m.mean(0), m.std(0), np.abs(np.diff(m, axis=0)).mean(0), [50 * slope] * 16]))
        labels.append(fields["label"])
    return np.array(feats), np.array(labels)


@pytest.mark.parametrize("labels", [sounds.LABELS, sounds.ALL_LABELS], ids=["default", "with-extra"])
def test_sound_kinds_are_distinguishable_on_the_log_mel(labels):
    """A nearest-centroid classifier on simple log-mel statistics, trained on one seed and
    tested on another, must name the kind of almost every clip: the eight default kinds, and
    all of them with the extra kinds (siren, drips, wail, bounce, wind)."""
    make = functools.partial(sounds.make, labels=labels)
    x_train, y_train = _features(make, 8 * len(labels), seed=1)
    x_test, y_test = _features(make, 6 * len(labels), seed=2)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    labels = sorted(set(y_train))
    centroids = np.stack([x_train[y_train == k].mean(0) for k in labels])
    pred = np.array(labels)[((x_test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert (pred == y_test).mean() >= 0.85


def test_birds_species_differ_in_the_stored_parameters(tmp_path):
    manifest = write_set("birds", tmp_path, n=20, seed=3, duration=2.0)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len({r["species"] for r in rows}) == len(birds.SPECIES) >= 4
    for row in rows:
        sp = birds.SPECIES[row["species"]]
        assert row["species"].replace("_", " ") in row["caption"]
        assert sp.pitch[0] <= row["pitch_hz"] <= sp.pitch[1]
        assert sp.trill[0] <= row["trill_rate"] <= sp.trill[1]
        assert sp.calls[0] <= row["call_count"] <= sp.calls[1]
    by = {s: [r for r in rows if r["species"] == s] for s in birds.SPECIES}
    assert min(r["pitch_hz"] for r in by["silver_warbler"]) > max(r["pitch_hz"] for r in by["dusk_dove"])
    assert min(r["trill_rate"] for r in by["silver_warbler"]) > 10 and all(r["trill_rate"] == 0 for r in by["river_thrush"])
    assert min(r["call_count"] for r in by["copper_finch"]) > max(r["call_count"] for r in by["ember_wren"])
    # the warbler's stored pitch is where its energy is
    wave, _ = sf.read(tmp_path / by["silver_warbler"][0]["audio"])
    spectrum = np.abs(np.fft.rfft(wave))
    spectrum[: len(spectrum) // 8] = 0  # ignore the wind below 1 kHz
    peak_hz = np.argmax(spectrum) * 16000 / len(wave)
    assert abs(peak_hz - by["silver_warbler"][0]["pitch_hz"]) < 300
