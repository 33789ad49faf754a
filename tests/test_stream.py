"""Training from WebDataset shards read as a stream (the `webdataset` reader, tta_core.data.stream):
the order is a function of (seed, position), split over processes without changing the
global batch, resumed exactly; bad samples are counted and skipped."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tta_core.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"


def _stage(shards, **extra):
    lanes = f", lanes: {extra['lanes']}" if "lanes" in extra else ""
    return (f"base: {RECIPE}\nname: streamed\n"
            f"data:\n  train: {{type: webdataset, shards: \"{shards}\", shuffle: 5{lanes}}}\n"
            "train:\n  - name: vae\n    objective: {type: vae_gan, kl_weight: 1.0e-6, disc_start: 100000}\n"
            "    trains: [vae]\n    max_steps: 4\n    batch_size: 4\n    duration: 0.32\n    checkpoint_every: 2\n")


TINY_VAE = ["--set", "components.vae.channels=[8,8]", "--set", "components.vae.norm_groups=4"]


@pytest.fixture(scope="module")
def shards(sets, tmp_path_factory):
    """sets/a (16 clips) as four shards of four, written by `tta-run RECIPE shard`."""
    root = tmp_path_factory.mktemp("shards")
    recipe = root / "r.yaml"
    recipe.write_text(f"base: {RECIPE}\nname: s\ndata:\n  train: {{type: jsonl, manifest: {sets / 'a' / 'manifest.jsonl'}}}\n")
    assert main([str(recipe), "shard", "--out", str(root / "out"), "--shard-size", "4", "--workers", "0"]) == 0
    return root / "out"


def _stream(shards, batch=4, **kw):
    from tta_core.data.stream import ShardSource, ShardStream, expand

    return ShardStream(ShardSource(expand(str(shards)), shuffle=kw.pop("shuffle", 5), lanes=kw.pop("lanes", None)),
                       seed=kw.pop("seed", 0), global_batch=batch, world=kw.pop("world", 1))


def _keys(batches, n):
    return [[s.key for _, _, s in next(batches)] for _ in range(n)]


def test_processes_share_each_global_batch_and_resume_where_they_stopped(shards):
    one = _keys(_stream(shards).batches(), 12)  # three epochs of 16 clips
    assert all(len(b) == 4 for b in one)
    from collections import Counter

    seen = Counter(k for b in one for k in b)  # 48 samples: every clip about three times
    assert len(seen) == 16 and max(seen.values()) <= 4
    assert [k for b in one[:4] for k in b] != sorted(k for b in one[:4] for k in b)  # shuffled
    two = [_stream(shards, world=2).batches(rank, 2) for rank in (0, 1)]
    for m, batch in enumerate(one):
        halves = [[s.key for _, _, s in next(two[rank])] for rank in (0, 1)]
        assert sorted(halves[0] + halves[1]) == sorted(batch), m
    assert _keys(_stream(shards).batches(start=7), 5) == one[7:12]
    assert _keys(_stream(shards, seed=1).batches(), 4) != one[:4]
    s = _stream(shards, world=2)
    assert set(s.lane_shards(0, 0)).isdisjoint(s.lane_shards(1, 0))  # a process reads its own shards


def test_lanes_are_checked_against_the_batch_and_the_processes(shards):
    from tta_core.errors import UsageError

    with pytest.raises(UsageError, match="divisor of batch_size"):
        _stream(shards, batch=6, lanes=4)
    with pytest.raises(UsageError, match="multiple of 3"):
        _stream(shards, batch=4, world=3)
    with pytest.raises(UsageError, match="more than its 4 shard"):
        _stream(shards, batch=8, lanes=8)


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_samples_and_a_broken_shard_are_counted_and_skipped(tmp_path):
    from tta_core.data.config import AudioConfig
    from tta_core.data.stream import ShardSource, StreamExamples

    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000, format="FLAC")
    good = buf.getvalue()
    caption = json.dumps({"text": ["a hum"]}).encode()
    _tar(tmp_path / "a.tar", [("k0.flac", good), ("k0.json", caption),
                              ("k1.flac", good[:100]), ("k1.json", caption),   # audio cut short
                              ("k2.flac", good), ("k2.json", b'{"text": []}'),  # no caption
                              ("k3.json", caption),                              # no audio
                              ("k4.wav", good), ("k4.json", json.dumps({"caption": "a hum"}).encode())])
    (tmp_path / "b.tar").write_bytes(b"not a tar file at all" * 40)
    source = ShardSource([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], shuffle=1, lanes=1)
    examples = StreamExamples(source, AudioConfig(duration=0.25), seed=0, global_batch=1)
    seen = [examples.example(lane, position, sample) for [(lane, position, sample)] in
            (next(b) for b in [examples.stream.batches()] * 6)]
    keys = [e["id"] if e else None for e in seen]
    assert keys[:3] == ["k0", None, "k4"] and keys[3:] == ["k0", None, "k4"]  # and again in the next epoch
    assert seen[0]["mel"].shape[-2:] == (25, 64) and seen[0]["caption"] == "a hum"
    assert source.skipped["no_caption"] == 2 and source.skipped["no_audio"] == 2
    assert source.skipped["unreadable_shard"] >= 1 and source.skipped["unreadable"] == 2
    assert examples.bad_count == 2


def test_the_reader_refuses_what_it_cannot_read_and_other_commands_need_files(shards, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_stage(tmp_path / "none-{0..3}.tar"))
    assert main([str(recipe), "train", "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 1
    assert "4 shard(s) not found" in capsys.readouterr().err
    recipe.write_text(_stage(shards))
    assert main([str(recipe), "prepare", "--run-dir", str(tmp_path / "run")]) == 2
    assert "stream of shards" in capsys.readouterr().err


@pytest.mark.slow
def test_training_from_shards_resumes_exactly(shards, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_stage(shards))
    common = [str(recipe), "train", *TINY_VAE, "--no-progress", "--skip-memory-check"]
    assert main([*common, "--run-dir", str(tmp_path / "straight")]) == 0
    assert main([*common, "--run-dir", str(tmp_path / "resumed"), "--max-steps", "2"]) == 0
    assert main([*common, "--run-dir", str(tmp_path / "resumed"), "--resume"]) == 0
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight/vae/checkpoints/step-00000004/vae.safetensors")
    b = load_file(tmp_path / "resumed/vae/checkpoints/step-00000004/vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # two DataLoader workers, each making every other batch: the same batches in the same order
    assert main([*common, "--run-dir", str(tmp_path / "workers"), "--set", "train.vae.num_workers=2"]) == 0
    c = load_file(tmp_path / "workers/vae/checkpoints/step-00000004/vae.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_two_processes_train_from_shards_as_one_does(shards, tmp_path):
    recipe = tmp_path / "r.yaml"
    # the posterior's mean, not a sample: the processes' noise would differ from the one process's
    recipe.write_text(_stage(shards, lanes=2).replace("disc_start: 100000}", "disc_start: 100000, sample_posterior: false}"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    runs = {"one": [sys.executable], "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node", "2"]}
    for name, launcher in runs.items():
        proc = subprocess.run([*launcher, "-m", "tta_core.cli", str(recipe), "train", *TINY_VAE, "--no-progress",
                               "--skip-memory-check", "--device", "cpu", "--run-dir", str(tmp_path / name)],
                              capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "one/vae/checkpoints/step-00000004/vae.safetensors")
    b = load_file(tmp_path / "two/vae/checkpoints/step-00000004/vae.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)


def test_shards_behind_a_pipe_url_stream_as_local_ones_do(shards):
    from tta_core.data.stream import ShardSource, ShardStream, expand

    local = expand(str(shards))
    piped = [f"pipe:cat {u}" for u in local]
    a = ShardStream(ShardSource(local, shuffle=3), seed=2, global_batch=4).batches()
    b = ShardStream(ShardSource(piped, shuffle=3), seed=2, global_batch=4).batches()
    for _ in range(6):
        assert [(s.key, s.audio) for _, _, s in next(a)] == [(s.key, s.audio) for _, _, s in next(b)]
    assert expand(f"pipe:cat {shards}/train-{{000000..000003}}.tar") == piped
