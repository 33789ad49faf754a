"""Generation split across processes: `torchrun ... -m tta_core.cli RECIPE sample` with two
gloo processes on the CPU writes the clips and the one manifest a single process writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"
PROMPTS = ["a rising chirp", "a low hum", "white noise", "a clock ticking", "a plucked string"]


def _env():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _sample(launcher, args, out, *extra):
    cmd = [*launcher, "-m", "tta_core.cli", str(RECIPE), "sample", *args, "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tiny_run, tmp_path):
    args, root = tiny_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--prompts", str(prompts), "--n-per-prompt", "2", "--batch-size", "3", "--steps", "2", "--seed", "7",
              "--device", "cpu"]
    one = _sample([sys.executable], args, tmp_path / "one", *common)
    two = _sample(TORCHRUN, args, tmp_path / "two", *common)
    assert "made by 2 processes" in two.stdout and two.stdout.count("wrote 10 file(s)") == 1
    rows_one = (tmp_path / "one" / "manifest.jsonl").read_text().splitlines()
    rows_two = (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()
    assert rows_two == rows_one  # the same lines, in prompt order
    assert [json.loads(r)["prompt"] for r in rows_two] == [p for p in PROMPTS for _ in range(2)]
    for row in map(json.loads, rows_one):
        assert (tmp_path / "two" / row["file"]).read_bytes() == (tmp_path / "one" / row["file"]).read_bytes()
        assert (tmp_path / "two" / row["spectrogram"]).is_file()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_a_usage_error_on_every_rank_stops_the_launch_with_its_message(tiny_run, tmp_path):
    args, root = tiny_run
    cmd = [*TORCHRUN, "-m", "tta_core.cli", str(RECIPE), "sample", *args, "--text", "a", "--steps", "2",
           "--device", "cpu", "--init-audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "missing.wav does not exist" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_eval_adherence_split_across_two_processes_scores_the_clips_one_makes(tiny_run, tmp_path):
    args, root = tiny_run
    args = [a for a in args if a != "--no-progress"]
    common = ["--adherence", "--n-per-label", "1", "--steps", "2", "--reference-per-label", "2", "--device", "cpu"]
    reports = {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        cmd = [*launcher, "-m", "tta_core.cli", str(RECIPE), "eval", *args, *common, "--out", str(tmp_path / name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("overall") == 1  # one report, from rank 0
        reports[name] = json.loads((tmp_path / name / "eval.json").read_text())["adherence"]
    assert reports["two"] == reports["one"] and reports["one"]["n"] == 8
    one, two = ((tmp_path / n / "manifest.jsonl").read_text().splitlines() for n in ("one", "two"))
    assert two == one
    for row in map(json.loads, one):
        assert (tmp_path / "two" / row["file"]).read_bytes() == (tmp_path / "one" / row["file"]).read_bytes()


@pytest.mark.slow
def test_prepare_under_two_processes_builds_the_cache_one_process_builds(sets, tmp_path):
    """Each process decodes every other block of clips and writes its shards; rank 0 writes
    the index: the same shards (byte for byte), index and report as one process, bad files
    counted once."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sets / "a", data)
    (data / "audio" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 30)
    with open(data / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"audio": "audio/broken.wav", "caption": "broken"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {RECIPE}\nname: prepared\ndata:\n  train: {{type: jsonl, manifest: {data / 'manifest.jsonl'}}}\n")
    outputs = {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        cmd = [*launcher, "-m", "tta_core.cli", str(recipe), "prepare", "--run-dir", str(tmp_path / name),
               "--workers", "0", "--cache-shard-size", "3"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs[name] = proc.stdout
    assert outputs["two"].count("17 rows, 16 usable, 1 skipped") == 1 and "16 computed" in outputs["two"]
    [one] = (tmp_path / "one" / "cache").glob("mel-*")
    two = tmp_path / "two" / "cache" / one.name
    files = sorted(p.name for p in one.iterdir())
    assert files == sorted(p.name for p in two.iterdir()) and len([f for f in files if f.startswith("shard-")]) == 6
    for f in files:
        assert (two / f).read_bytes() == (one / f).read_bytes(), f
    assert (tmp_path / "two" / "cache" / "report.json").read_text() == (tmp_path / "one" / "cache" / "report.json").read_text()
    # and again: every clip is reused, in one process or two
    proc = subprocess.run([*TORCHRUN, "-m", "tta_core.cli", str(recipe), "prepare", "--run-dir", str(tmp_path / "two"),
                           "--workers", "0"], capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0 and "0 computed, 16 reused" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_stage_under_two_processes_fills_the_latent_and_text_caches_one_process_fills(tiny_run, tmp_path):
    """The latent-diffusion stage's caches, filled by two processes (each encoding every
    other block of clips and captions), are those one process fills, shard for shard."""
    import shutil

    args, root = tiny_run
    args = [a for a in args if a != "--no-progress"]
    i = args.index("--run-dir")
    args = args[:i] + args[i + 2:]
    # the quickstart with a third stage that trains the U-Net alone: its text encoder is frozen,
    # so its captions are cached too
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text().replace("\nsample:", """
  - name: ft
    objective: {type: latent_diffusion, cache_shard_size: 4}
    trains: [unet]
    frozen: [vae, text]
    max_steps: 1
    batch_size: 4
\nsample:""", 1))
    for name in ("one", "two"):
        shutil.copytree(root / "run", tmp_path / name, ignore=shutil.ignore_patterns("latent-*", "text-*"))
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        cmd = [*launcher, "-m", "tta_core.cli", str(recipe), "train", *args, "--run-dir", str(tmp_path / name),
               "--stage", "ft", "--device", "cpu", "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for kind in ("latent", "text"):
        [one] = (tmp_path / "one" / "cache").glob(f"{kind}-*")
        two = tmp_path / "two" / "cache" / one.name
        files = sorted(p.name for p in one.iterdir())
        assert files == sorted(p.name for p in two.iterdir()), kind
        assert len([f for f in files if f.startswith("shard-")]) >= 2, (kind, files)  # both processes wrote some
        for f in files:
            assert (two / f).read_bytes() == (one / f).read_bytes(), (kind, f)
