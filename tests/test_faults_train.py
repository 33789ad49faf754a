"""Training never loses work: --fresh, signals, kill -9, damaged checkpoints, locks, full disks.

Every test records the bytes of every file under the run directory before the fault and checks
them after it. The toy plugin of test_train.py is extended with a data set that can be
mistyped, a network that can pause while it is built, and (through environment variables, for
the subprocess tests) a pause inside a checkpoint write.
"""

import errno
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import TOY
from tta_core.checkpoint import latest_checkpoint, load_checkpoint
from tta_core.cli import main
from tta_core.errors import UsageError
from tta_core.training.engine import Trainer

FAULTS = TOY.replace("@hookimpl\ndef tta_register(register):", "def _register_toy(register):") + '''
import time
from pathlib import Path

from tta_core.errors import DataError


class Manifest(Regression):
    """The toy objective, reading its items only when its manifest file exists."""

    def __init__(self, manifest: str = "", n_items: int = 37, noise: float = 0.1, nan_at: list[int] = (),
                 kill_at: int = -1, oom_at: int = -1):
        super().__init__(n_items, noise, nan_at, kill_at, oom_at)
        self.manifest = manifest

    def train_dataset(self, ctx):
        if not Path(self.manifest).is_file():
            raise DataError(f"manifest not found: {self.manifest}")
        return super().train_dataset(ctx)


class SlowNet(Net):
    """The toy network; with pause_file it says it is being built there and waits for a signal."""

    def __init__(self, width: int = 8, dropout: float = 0.1, pause_file: str = ""):
        super().__init__(width, dropout)
        if pause_file:
            Path(pause_file).write_text("building")
            time.sleep(120)


if os.environ.get("TOY_PAUSE_SAVE_AT"):  # a window inside the write of one checkpoint
    import tta_core.checkpoint as _checkpoint

    _real_save_weights = _checkpoint.save_weights

    def _pausing_save_weights(path, *args, **kwargs):
        _real_save_weights(path, *args, **kwargs)
        marker = Path(os.environ["TOY_PAUSE_FILE"])
        if f"step-{int(os.environ['TOY_PAUSE_SAVE_AT']):08d}" in str(path) and not marker.exists():
            marker.write_text(str(path))
            time.sleep(120)

    _checkpoint.save_weights = _pausing_save_weights

@hookimpl
def tta_register(register):
    _register_toy(register)
    register("objective", "toy_manifest", Manifest)
    register("denoiser", "toy_slow_net", SlowNet)
'''

RECIPE = """
name: faults
components:
  net: {type: toy_slow_net, width: 8}
train:
  - name: fit
    objective: {type: toy_manifest, manifest: MANIFEST}
    trains: [net]
    max_steps: 8
    batch_size: 4
    optimizer: {lr: 0.05}
    ema: {beta: 0.9, power: 1.0}
    checkpoint_every: 4
    keep_last: 10
    log_every: 1
"""

PLUGIN_ENV = {"TTA_DISABLE_PLUGIN_AUTOLOAD": "1", "TTA_PLUGINS": "faults"}  # only the test plugin: fast start


@pytest.fixture
def toy(tmp_path, fake_dists, monkeypatch):
    fake_dists("tta-faults", "1.0", {"faults": FAULTS})
    for key, value in PLUGIN_ENV.items():
        monkeypatch.setenv(key, value)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("{}\n")
    path = tmp_path / "faults.yaml"
    path.write_text(RECIPE.replace("MANIFEST", str(manifest)))
    return path


def train(recipe, run_dir, *extra):
    return main([str(recipe), "train", "--run-dir", str(run_dir), "--no-progress", *extra])


def files(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


MARKER = "fit/checkpoints/latest"  # names the newest checkpoint: each new one rewrites it


def assert_intact(before: dict[str, bytes], after: dict[str, bytes], appended=(), moved=None) -> None:
    """Every file of ``before`` is in ``after`` with the same bytes (``appended`` ones may have
    grown at the end; ``moved`` maps a folder to where it went). The ``latest`` marker is checked
    by the tests through latest_checkpoint."""
    for name, data in before.items():
        if name == MARKER:
            continue
        where = name
        for old, new in (moved or {}).items():
            if name.startswith(old + "/"):
                where = new + name[len(old):]
        assert where in after, f"{name} is gone"
        if name in appended:
            assert after[where][: len(data)] == data, f"{name} was rewritten"
        else:
            assert after[where] == data, f"{name} changed"


def steps(run_dir, stage="fit"):
    root = Path(run_dir) / stage / "checkpoints"
    return sorted(p.name for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name))


def leftovers(run_dir, stage="fit"):
    """Folders of unfinished writes and --fresh hand-overs."""
    stage_dir = Path(run_dir) / stage
    found = [p.name for p in stage_dir.iterdir() if p.name.startswith("checkpoints.")]
    if (stage_dir / "checkpoints").is_dir():
        found += [p.name for p in (stage_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    return found


def spawn(recipe, run_dir, *extra, env=None):
    site = str(Path(recipe).parent / "site")
    full = {**os.environ, **PLUGIN_ENV, "PYTHONPATH": site, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "tta_core.cli", str(recipe), "train", "--run-dir", str(run_dir),
                             "--no-progress", *extra], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


# 1 -------------------------------------------------------------------------------------------


def test_fresh_checks_everything_before_it_touches_the_old_checkpoints(toy, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert train(toy, run) == 0
    before = files(run)
    assert steps(run) == ["step-00000004", "step-00000008"]

    assert train(toy, run, "--fresh", "--init-from", str(tmp_path / "nowhere")) == 2
    assert f"--init-from {tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err
    assert files(run) == before

    assert train(toy, run, "--fresh", "--set", f"train.fit.objective.manifest={tmp_path / 'manifst.jsonl'}") == 1
    assert f"manifest not found: {tmp_path / 'manifst.jsonl'}" in capsys.readouterr().err
    assert files(run) == before

    # a run that gets going and fails in its first step: the old checkpoints are still the ones in use
    with caplog.at_level(logging.INFO, logger="tta"):
        assert train(toy, run, "--fresh", "--set", "train.fit.objective.oom_at=0") == 1
    assert "out of memory" in capsys.readouterr().err
    assert "the previous checkpoints of stage 'fit'" in caplog.text and "are kept" in caplog.text
    assert_intact(before, files(run))
    assert leftovers(run) == [] and latest_checkpoint(run / "fit/checkpoints").step == 8

    # and when it does make progress, its first checkpoint replaces them
    assert train(toy, run, "--fresh", "--max-steps", "2") == 0
    assert steps(run) == ["step-00000002"] and leftovers(run) == []


# 2 -------------------------------------------------------------------------------------------


def test_an_interrupted_fresh_run_says_how_to_resume_without_fresh(toy, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert train(toy, run) == 0
    assert train(toy, run, "--fresh", "--set", "train.fit.objective.kill_at=1") == 143
    err = capsys.readouterr().err
    assert "without --fresh" in err
    command = err.split("):\n", 1)[1].splitlines()[0].strip()
    assert command == shlex.join(["tta-run", str(toy), "train", "--set", "train.fit.objective.kill_at=1",
                                  "--run-dir", str(run), "--no-progress"])
    assert steps(run) == ["step-00000002"]  # the new run's checkpoint replaced the old ones
    before = files(run)

    with caplog.at_level(logging.INFO, logger="tta"):
        assert main(shlex.split(command)[1:]) == 0  # the advice, followed, resumes the new run
    assert "resuming stage 'fit' from step 2" in caplog.text
    assert latest_checkpoint(run / "fit/checkpoints").step == 8
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))


# 3 -------------------------------------------------------------------------------------------


def test_device_cuda_without_cuda_and_an_unknown_device_fail_before_anything_is_built(toy, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    built = []
    monkeypatch.setattr(Trainer, "_build_components", lambda self: built.append(1))
    run = tmp_path / "run"
    assert train(toy, run, "--device", "cuda") == 2
    assert "--device cuda: CUDA is not available here (use --device cpu)" in capsys.readouterr().err
    assert train(toy, run, "--device", "foo") == 2
    assert "--device takes cpu, cuda or auto, got 'foo'" in capsys.readouterr().err
    assert not run.exists() and built == []
    with pytest.raises(UsageError, match="CUDA is not available"):  # the Python API checks it too
        Trainer(None, None, None, run, stage_order=[], device="cuda:0")


@pytest.mark.parametrize("cuda, count, env, device, message", [
    (False, 0, {}, "cuda:1", "--device cuda:1: CUDA is not available here (use --device cpu)"),  # as sample says it
    (True, 1, {}, "cuda:1", "--device cuda:1: this machine has 1 CUDA device (cuda:0)"),
    (True, 2, {}, "cuda:7", "--device cuda:7: this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
    (True, 2, {}, "cuda:x", "--device 'cuda:x'"),
    (True, 2, {"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "cuda:0",
     "--device cuda:0: under accelerate launch / torchrun each process trains on the GPU the launcher gives it "
     "(this one: cuda:1)"),
])
def test_a_device_training_cannot_use_as_asked_is_refused_before_anything_is_built(toy, tmp_path, capsys, monkeypatch,
                                                                                  cuda, count, env, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    built = []
    monkeypatch.setattr(Trainer, "_build_components", lambda self: built.append(1))
    run = tmp_path / "run"
    assert train(toy, run, "--device", device) == 2
    assert message in capsys.readouterr().err
    assert not run.exists() and built == []


def test_a_gpu_index_is_the_gpu_a_single_process_trains_on(toy, tmp_path, monkeypatch):
    """accelerate trains one process on the current CUDA device: --device cuda:1 must make it GPU 1
    (checked here without a GPU, by what the trainer asks of torch and accelerate)."""
    import accelerate

    from tta_core.recipe import load_recipe
    from tta_core.training.stage import parse_stage

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen, made = [], []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: made.append(kwargs))
    recipe = load_recipe(toy)
    stage = parse_stage(recipe.get("train")[0])
    Trainer(recipe, None, stage, tmp_path / "run", stage_order=["fit"], device="cuda:1")._accelerator()
    assert chosen == [torch.device("cuda", 1)] and made[0]["cpu"] is False
    chosen.clear()
    Trainer(recipe, None, stage, tmp_path / "run", stage_order=["fit"], device="cuda")._accelerator()
    assert chosen == [] and made[1]["cpu"] is False  # no index: the current device, as sample does


# 4 -------------------------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_named_with_the_next_step_and_never_deleted(toy, tmp_path, capsys, caplog):
    every2 = ("--set", "train.fit.checkpoint_every=2")
    run = tmp_path / "run"
    assert train(toy, run, *every2, "--max-steps", "4") == 0
    state = run / "fit/checkpoints/step-00000004/state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a write cut short by a disk fault
    before = files(run)

    with caplog.at_level(logging.INFO, logger="tta"):
        assert train(toy, run, *every2, "--max-steps", "6") == 0
    assert f"checkpoint {state.parent} is damaged: cannot read state.pt" in caplog.text
    assert f"resuming from the checkpoint before it instead: {state.parent.with_name('step-00000002')}" in caplog.text
    assert "resuming stage 'fit' from step 2" in caplog.text
    assert f"moved the damaged checkpoint {state.parent} to {state.parent}.damaged" in caplog.text
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",),
                  moved={"fit/checkpoints/step-00000004": "fit/checkpoints/step-00000004.damaged"})
    assert steps(run) == ["step-00000002", "step-00000004", "step-00000006"]
    assert latest_checkpoint(run / "fit/checkpoints").step == 6

    # the only checkpoint is damaged: nothing to fall back to, the message says what to do
    alone = tmp_path / "alone"
    assert train(toy, alone, "--max-steps", "2") == 0
    weights = alone / "fit/checkpoints/step-00000002/net.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    capsys.readouterr()
    before = files(alone)
    assert train(toy, alone) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {weights.parent} is damaged: cannot read net.safetensors" in err
    assert f"move this folder out of {weights.parent.parent}" in err and "--fresh" in err
    assert "no earlier readable checkpoint" in err
    assert files(alone) == before


# 5 -------------------------------------------------------------------------------------------

HOLDER = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()}\\nhost {socket.gethostname()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_a_locked_stage_is_refused_and_a_stale_lock_is_taken_over(toy, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert train(toy, run, "--max-steps", "4") == 0
    lock = run / "fit/train.lock"
    assert not lock.exists()  # released by the run that held it
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = files(run)
        assert train(toy, run) == 2
        err = capsys.readouterr().err
        assert f"the lock {lock} is held by pid {holder.pid}" in err and "nothing was changed" in err
        assert files(run) == before
    finally:
        holder.kill()
        holder.wait()

    # its process is gone (kill -9 drops the flock), the file is still there: taken over, with a warning
    assert lock.exists()
    before = files(run)
    with caplog.at_level(logging.WARNING, logger="tta"):
        assert train(toy, run) == 0
    assert f"taking over {lock}: the run that held it (pid {holder.pid}" in caplog.text
    assert "is no longer running" in caplog.text
    del before["fit/train.lock"]
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))
    assert not lock.exists() and latest_checkpoint(run / "fit/checkpoints").step == 8


# 6 -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_while_components_are_built_changes_nothing(toy, tmp_path):
    run = tmp_path / "run"
    assert train(toy, run) == 0
    before = files(run)
    marker = tmp_path / "building"
    proc = spawn(toy, run, "--fresh", "--set", f"components.net.pause_file={marker}")
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by signal 15 before training started; nothing was changed" in err
    assert "the previous checkpoints of stage 'fit' are kept" in err
    assert shlex.join(["tta-run", str(toy), "train", "--set", f"components.net.pause_file={marker}",
                       "--run-dir", str(run), "--no-progress", "--fresh"]) in err
    assert files(run) == before  # the lock is gone too


def test_sigterm_during_a_checkpoint_write_lets_it_complete(toy, tmp_path, monkeypatch, capsys):
    import tta_core.checkpoint as checkpoint

    real = checkpoint.save_weights
    sent = []

    def signalling(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if "step-00000004" in str(path) and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint, "save_weights", signalling)
    run = tmp_path / "run"
    assert train(toy, run) == 143
    assert sent and ".tmp-step-00000004" in str(sent[0])  # the signal came in the middle of the write
    assert "resume with:" in capsys.readouterr().err
    four = load_checkpoint(run / "fit/checkpoints/step-00000004")
    assert four.step == 4 and set(four.read().weights) == {"net", "net.ema"}
    assert latest_checkpoint(run / "fit/checkpoints").step == 5 and leftovers(run) == []
    monkeypatch.setattr(checkpoint, "save_weights", real)
    before = files(run)
    assert train(toy, run) == 0
    assert latest_checkpoint(run / "fit/checkpoints").step == 8
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))


def test_a_second_sigint_during_a_checkpoint_write_discards_it_whole(toy, tmp_path, monkeypatch, capsys):
    import tta_core.checkpoint as checkpoint

    run = tmp_path / "run"
    assert train(toy, run, "--max-steps", "4") == 0
    before = files(run)
    real = checkpoint.save_weights

    def interrupting(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if "step-00000008" in str(path):
            os.kill(os.getpid(), signal.SIGINT)  # asks to stop after the step
            os.kill(os.getpid(), signal.SIGINT)  # and now

    monkeypatch.setattr(checkpoint, "save_weights", interrupting)
    assert train(toy, run) == 130
    assert "interrupted" in capsys.readouterr().err
    assert steps(run) == ["step-00000004"] and leftovers(run) == []
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))
    monkeypatch.setattr(checkpoint, "save_weights", real)
    assert train(toy, run) == 0 and latest_checkpoint(run / "fit/checkpoints").step == 8


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume_from_the_last_complete_one(toy, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    marker = tmp_path / "saving"
    proc = spawn(toy, run, env={"TOY_PAUSE_SAVE_AT": "8", "TOY_PAUSE_FILE": str(marker)})
    try:
        wait_for(marker, proc)
        # the checkpoint being written is under a temporary name; the selected one is complete
        partial = Path(marker.read_text()).parent
        assert partial.name == f".tmp-step-00000008-{proc.pid}" and partial.parent == run / "fit/checkpoints"
        assert steps(run) == ["step-00000004"]
        assert latest_checkpoint(run / "fit/checkpoints").step == 4
        before = files(run)

        # meanwhile a second run on the same stage is refused, and touches nothing
        assert train(toy, run) == 2
        err = capsys.readouterr().err
        assert f"the lock {run / 'fit/train.lock'} is held by pid {proc.pid}" in err
        assert files(run) == before
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with caplog.at_level(logging.INFO, logger="tta"):
        assert train(toy, run) == 0
    assert "taking over" in caplog.text and "resuming stage 'fit' from step 4" in caplog.text
    assert steps(run) == ["step-00000004", "step-00000008"] and leftovers(run) == []
    before = {k: v for k, v in before.items() if not k.startswith(("fit/checkpoints/.tmp", "fit/train.lock"))}
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_good_one(toy, tmp_path, monkeypatch, capsys):
    import tta_core.checkpoint as checkpoint

    run = tmp_path / "run"
    assert train(toy, run, "--max-steps", "4") == 0
    before = files(run)
    real = checkpoint._write_file

    def full(path, data):
        if Path(path).name == "state.pt":  # the weights went in, the training state does not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", full)
    assert train(toy, run) == 1
    err = capsys.readouterr().err
    assert "could not write the checkpoint of step 8" in err and "No space left on device" in err
    assert f"The last good checkpoint is untouched: {run / 'fit/checkpoints/step-00000004'}" in err
    assert steps(run) == ["step-00000004"] and leftovers(run) == []
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))


def test_a_fresh_hand_over_cut_by_kill_9_is_put_back_by_the_next_run(toy, tmp_path, caplog):
    """What kill -9 between the two renames of a --fresh hand-over leaves: no checkpoints/, the
    old ones set aside, the new run's folder with a partial write. The next run restores them."""
    run = tmp_path / "run"
    assert train(toy, run, "--max-steps", "4") == 0
    before = files(run)
    stage = run / "fit"
    os.replace(stage / "checkpoints", stage / "checkpoints.old-20250101-000000")
    partial = stage / "checkpoints.new-20250101-000000/.tmp-step-00000002-1"
    partial.mkdir(parents=True)
    (partial / "net.safetensors").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.INFO, logger="tta"):
        assert train(toy, run, "--max-steps", "6") == 0
    assert f"put back {stage / 'checkpoints.old-20250101-000000'} as {stage / 'checkpoints'}" in caplog.text
    assert "resuming stage 'fit' from step 4" in caplog.text
    assert leftovers(run) == [] and steps(run) == ["step-00000004", "step-00000006"]
    assert_intact(before, files(run), appended=("fit/logs/metrics.jsonl",))


def test_a_re_save_of_a_step_cut_between_its_renames_is_put_back(tmp_path):
    from tta_core.checkpoint import clean_temporaries, save_checkpoint

    save_checkpoint(tmp_path, 4, weights={"net": {"w": torch.ones(2)}}, state={})
    before = files(tmp_path)
    os.replace(tmp_path / "step-00000004", tmp_path / ".old-step-00000004-123")  # killed right here
    (tmp_path / ".tmp-step-00000004-123").mkdir()
    clean_temporaries(tmp_path)
    assert files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004"]
