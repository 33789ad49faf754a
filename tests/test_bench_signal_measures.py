"""bench/bench_signal_measures.py: its measures read what they name on signals made to have it."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SR = 16000


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_signal_measures", REPO / "bench/bench_signal_measures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tone(hz, seconds=1.28):
    t = np.arange(int(seconds * SR)) / SR
    return np.sin(2 * np.pi * hz * t)


def test_a_steady_tone_is_pure_flat_free_and_steady(bench):
    m = bench.measures(_tone(2000.0), SR)
    assert m["purity"] > 0.95 and m["flatness"] < 0.01 and m["drift"] < 1.0
    assert m["event"] > 1.2  # one event, the whole clip


def test_noise_is_flat_and_impure(bench):
    m = bench.measures(np.random.default_rng(0).standard_normal(int(1.28 * SR)), SR)
    assert m["flatness"] > 0.4 and m["purity"] < 0.05


def _beeps(length, hz=(2000.0, 2000.0, 2000.0)):
    wave = np.zeros(int(1.28 * SR))
    for start, f in zip((0.1, 0.5, 0.9), hz):
        a = int(start * SR)
        wave[a:a + int(length * SR)] = _tone(f, length)
    return wave


def test_beeps_last_as_long_as_they_sound_and_a_wandering_pitch_drifts(bench):
    short, long = bench.measures(_beeps(0.12), SR), bench.measures(_beeps(0.24), SR)
    # the STFT's window adds the same ~50 ms to every event
    assert 0.12 <= short["event"] < 0.2 and abs(long["event"] - short["event"] - 0.12) < 0.02
    assert short["drift"] < 1.0 and bench.measures(_beeps(0.12, (2000.0, 2600.0, 2000.0)), SR)["drift"] > 200


def test_the_table_sets_generated_clips_beside_real_ones_and_their_griffin_lim(bench, tmp_path, capsys):
    import json

    import soundfile as sf

    real = tmp_path / "real"
    (real / "audio").mkdir(parents=True)
    rows = []
    for i in range(2):
        sf.write(real / f"audio/{i}.wav", _tone(2000.0, 2.0) * 0.5, SR)
        rows.append(json.dumps({"audio": f"audio/{i}.wav", "label": "high_beep"}))
    (real / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    generated = tmp_path / "gen"
    generated.mkdir()
    sf.write(generated / "high_beep-0.wav", np.random.default_rng(0).standard_normal(int(1.28 * SR)) * 0.1, SR)
    assert bench.main([str(generated), "--reference", str(real / "manifest.jsonl")]) == 0
    lines = {line.split()[-1]: [float(x) for x in line.split()[1:-1]] for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == {"real", "real+gl", str(generated)}
    assert lines["real"][1] > 0.95 and lines["real+gl"][1] > 0.8 and lines[str(generated)][1] < 0.05
