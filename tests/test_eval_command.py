"""`tta-run [RECIPE] eval`: generated against reference folders with the weight-free
`mel_stats` embedder and with randomly initialised `panns` and `clap` saved to local files;
the autoencoder round trip of a tiny trained run; `sample --n K --rerank clap`."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tta_core.cli import main



def _eval(*args):
    return main(["eval", "--cache", "none", *args])


def _report(out: Path) -> dict:
    return json.loads((out / "eval.json").read_text())


def test_a_set_against_itself_and_against_another(sets, tmp_path):
    assert _eval("--generated", str(sets / "a"), "--reference", str(sets / "a"), "--out", str(tmp_path / "same")) == 0
    same = _report(tmp_path / "same")
    assert same["metrics"]["fd"] == pytest.approx(0.0, abs=1e-6)
    assert same["counts"] == {"generated": {"expected": 16, "used": 16}, "reference": {"expected": 16, "used": 16}}
    assert same["embedder"]["name"] == "mel_stats" and same["embedder"]["settings"]["sample_rate"] == 16000

    assert _eval("--generated", str(sets / "a"), "--reference", str(sets / "b"), "--out", str(tmp_path / "other")) == 0
    other = _report(tmp_path / "other")
    assert other["metrics"]["fd"] > 1.0
    # a plain folder of files (no manifest) is a set too, and gives the same numbers
    plain = tmp_path / "plain"
    shutil.copytree(sets / "b", plain, ignore=shutil.ignore_patterns("manifest.jsonl"))
    assert _eval("--generated", str(sets / "a"), "--reference", str(plain), "--out", str(tmp_path / "p")) == 0
    assert _report(tmp_path / "p")["metrics"]["fd"] == pytest.approx(other["metrics"]["fd"], rel=1e-9)


def test_missing_files_fail_the_run_above_the_threshold_and_are_reported_below(sets, tmp_path, capsys):
    gen = tmp_path / "gen"
    shutil.copytree(sets / "a", gen)
    victim = sorted(gen.rglob("*.wav"))[0]
    victim.unlink()
    assert _eval("--generated", str(gen), "--reference", str(sets / "b"), "--out", str(tmp_path / "o")) != 0
    err = capsys.readouterr().err
    assert "1 of 16 generated clips cannot be used" in err and victim.name in err and not (tmp_path / "o").exists()
    assert _eval("--generated", str(gen), "--reference", str(sets / "b"), "--max-missing", "0.1",
                 "--out", str(tmp_path / "o")) == 0
    report = _report(tmp_path / "o")
    assert report["counts"]["generated"] == {"expected": 16, "used": 15}
    assert any(victim.name in p for p in report["not_used"]["generated"])


def test_embeddings_are_cached_and_recomputed_when_a_file_changes(sets, tmp_path):
    gen = tmp_path / "gen"
    shutil.copytree(sets / "a", gen)
    cache = tmp_path / "cache"
    args = ["eval", "--generated", str(gen), "--reference", str(sets / "b"), "--cache", str(cache), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    first = sorted(p.name for p in cache.iterdir())
    fd = _report(tmp_path / "o")["metrics"]["fd"]
    assert len(first) == 2 and main(args) == 0 and sorted(p.name for p in cache.iterdir()) == first
    assert _report(tmp_path / "o")["metrics"]["fd"] == fd
    shutil.copyfile(sorted((sets / "b").rglob("*.wav"))[0], sorted(gen.rglob("*.wav"))[0])  # one clip replaced
    assert main(args) == 0
    assert len(list(cache.iterdir())) == 3 and _report(tmp_path / "o")["metrics"]["fd"] != fd


@pytest.fixture(scope="module")
def panns_file(tmp_path_factory):
    from tta_eval.panns import PANNs

    torch.manual_seed(0)
    model = PANNs(sample_rate=16000, random=True)
    path = tmp_path_factory.mktemp("weights") / "Cnn14_16k_random.pth"
    torch.save({"model": model.net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def clap_file(tiny_clap):  # (a random laion-clap checkpoint, its own text tower)
    return tiny_clap


@pytest.mark.slow
def test_panns_gives_fd_kl_and_is(sets, tmp_path, panns_file):
    spec = f"{{type: panns, weights: {panns_file}}}"
    assert _eval("--generated", str(sets / "a"), "--reference", str(sets / "b"), "--embedder", spec,
                 "--out", str(tmp_path / "o")) == 0
    report = _report(tmp_path / "o")
    m = report["metrics"]
    assert set(m) >= {"fd", "kl_softmax", "kl_softmax_gen_to_ref", "kl_sigmoid", "is", "is_std"}
    assert m["fd"] > 0 and m["kl_softmax"] > 0 and 1.0 <= m["is"] <= 527
    assert report["details"]["kl"]["pairs"] == 16  # the two sets' files share their names
    assert str(panns_file) in json.dumps(report["embedder"]["settings"])
    # the same set on both sides: posteriors identical, so both KL directions are 0
    assert _eval("--generated", str(sets / "a"), "--reference", str(sets / "a"), "--embedder", spec,
                 "--metrics", "kl", "--out", str(tmp_path / "s")) == 0
    assert _report(tmp_path / "s")["metrics"]["kl_softmax"] == pytest.approx(0.0, abs=1e-9)


def test_kl_and_is_need_a_classifier(sets, tmp_path, capsys):
    assert _eval("--generated", str(sets / "a"), "--reference", str(sets / "b"), "--metrics", "fd,kl") == 2
    assert "classifier" in capsys.readouterr().err


@pytest.mark.slow
def test_clap_score_reads_the_prompts(sets, tmp_path, clap_file):
    spec = f"{{type: clap, pretrained: {clap_file}, tmodel: transformer}}"
    assert _eval("--generated", str(sets / "a"), "--metrics", "clap", "--text-embedder", spec,
                 "--out", str(tmp_path / "o")) == 0
    report = _report(tmp_path / "o")
    assert -1.0 <= report["metrics"]["clap"] <= 1.0 and report["details"]["clap"]["pairs"] == 16
    # a folder with no prompts has nothing to score
    plain = tmp_path / "plain"
    shutil.copytree(sets / "a", plain, ignore=shutil.ignore_patterns("manifest.jsonl"))
    assert _eval("--generated", str(plain), "--metrics", "clap", "--text-embedder", spec) != 0


# -- with a trained (tiny) run ------------------------------------------------------------------


def test_reconstruction_scores_the_round_trip_on_the_valid_split(tiny_run, monkeypatch):
    args, root = tiny_run
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["recipes/quickstart.yaml", "eval", "--reconstruction", "--n-items", "4", *args[:-1],
                 "--out", str(root / "rec")]) == 0
    report = _report(root / "rec")
    assert set(report["metrics"]) == {"mel_l1", "psnr", "ssim", "lsd", "si_sdr"}
    assert report["counts"] == {"expected": 4, "used": 4} and report["domain"] == "mel"
    assert set(report["vocoder_only"]) == {"lsd", "si_sdr"}
    assert report["metrics"]["mel_l1"] > 0 and report["metrics"]["ssim"] < 1


@pytest.mark.slow
def test_rerank_keeps_the_best_candidate_and_records_every_score(tiny_run, clap_file, tmp_path, monkeypatch):
    args, root = tiny_run
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    spec = f"{{type: clap, pretrained: {clap_file}, tmodel: transformer}}"
    out = tmp_path / "out"
    assert main(["recipes/quickstart.yaml", "sample", "--text", "a rising chirp", "--text", "white noise",
                 "--n", "3", "--rerank", spec, "--steps", "2", "--out", str(out), *args]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and len(list(out.glob("*.wav"))) == 2
    for row in rows:
        scores = row["rerank"]["scores"]
        assert len(scores) == 3 and row["rerank"]["chosen"] == max(range(3), key=scores.__getitem__)
    # the kept clip is the candidate that scored best: scoring it again gives that score
    import soundfile

    from tta_core.eval.compare import embedder_from_spec, spec_of
    from tta_core.eval.rerank import scores as rank
    from tta_core.discovery import get_plugins

    embedder = embedder_from_spec(spec_of(spec), get_plugins().registry)
    wave, rate = soundfile.read(out / rows[0]["file"], dtype="float32")
    again = float(rank(embedder, rows[0]["prompt"], torch.from_numpy(wave)[None], rate)[0])
    assert again == pytest.approx(max(rows[0]["rerank"]["scores"]), abs=2e-3)  # 16-bit WAV rounding


def test_a_recipes_valid_split_is_the_default_reference(tiny_run, sets, tmp_path, monkeypatch):
    args, root = tiny_run
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["recipes/quickstart.yaml", "eval", "--generated", str(sets / "b"), "--cache", "none",
                 "--out", str(tmp_path / "o"), *args[:-1]]) == 0
    report = _report(tmp_path / "o")
    assert report["counts"]["reference"] == {"expected": 16, "used": 16} and "data.valid" in report["sets"]["reference"]
    assert report["metrics"]["fd"] > 0


def test_rerank_refuses_an_embedder_without_text_before_generating(tiny_run, tmp_path, monkeypatch, capsys):
    args, _ = tiny_run
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "out"
    assert main(["recipes/quickstart.yaml", "sample", "--text", "white noise", "--n", "2", "--rerank", "mel_stats",
                 "--steps", "2", "--out", str(out), *args]) == 2
    assert "no text side" in capsys.readouterr().err and not out.exists()


def test_adherence_classifier_names_each_kind_and_the_direction_of_short_sweeps():
    """The adherence classifier, fitted on synthetic clips, names the kind of held-out ones,
    and tells a sweep's direction where the sweep fills only a quarter of the window, after or
    before near-silence (the floor around it must not count as part of the sweep)."""
    import numpy as np

    from tta_core.data.config import AudioConfig
    from tta_core.data.mel import log_mel
    from tta_core.eval.adherence import AdherenceClassifier, features, score
    from tta_core.synth import sounds
    from tta_core.synth.dsp import fades, finish, oscillator, sweep

    audio = AudioConfig.from_mapping({"sample_rate": 16000, "duration": 1.28,
                                      "mel": {"n_fft": 1024, "hop": 160, "win": 1024, "n_mels": 64}})
    n = 20480

    def mels(waves):
        return log_mel(torch.from_numpy(np.stack(waves)).float(), audio)

    def clips(count, seed):
        made = [sounds.make(i, seed, n, 16000) for i in range(count)]
        return mels([w for w, _ in made]), [f["label"] for _, f in made]

    x, y = clips(240, seed=5)
    clf = AdherenceClassifier.fit(features(x), y)
    x_held, y_held = clips(80, seed=6)
    assert score(clf, features(x_held), y_held, 0.0).overall >= 0.95

    short, labels = [], []
    rng = np.random.default_rng(0)
    for k in range(16):  # sweeps over a quarter of the window, at its start or at its end
        up = k % 2 == 0
        lo, hi = rng.uniform(200, 600), rng.uniform(2500, 6000)
        m = int(n * rng.uniform(0.2, 0.35))
        seg = oscillator(sweep(lo, hi, m, 16000) if up else sweep(hi, lo, m, 16000), m, 16000) * fades(m, 16000)
        wave = np.zeros(n)
        if k % 4 < 2:
            wave[n - m:] = seg
        else:
            wave[:m] = seg
        short.append(finish(wave, rng)[0])
        labels.append("rising_chirp" if up else "falling_chirp")
    assert clf.predict(features(mels(short))) == labels
