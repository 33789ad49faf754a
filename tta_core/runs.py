"""The run directory: where a recipe's stages keep their checkpoints, logs and samples.

    runs/<recipe>/                 default; --run-dir DIR on train, sample and eval
      <stage>/
        train.lock                 held while a training run writes the stage (pid and host inside)
        recipe.resolved.yaml       the recipe of its checkpoints (written with the first of each run)
        checkpoints/step-<N>/      <component>.safetensors, <component>.ema.safetensors,
                                   state.json, state.pt  (see tta_core.checkpoint)
        checkpoints/latest
        logs/                      metrics.jsonl and TensorBoard events
        samples/                   validation clips and spectrograms
      weights/<component>.safetensors   weights of components no stage trains (an imported
                                   text encoder or vocoder, say), used when no stage has any;
                                   also the base under a stage's adapters (linked from --init-from)
      <stage>/checkpoints/step-<N>/<component>.adapter[.ema].safetensors   a stage with adapters:
                                   the adapters alone (tta_core.adapters)

Weights of a component are found in the latest checkpoint of the last stage (in recipe
order) that trains it; the EMA copy is preferred when the stage kept one.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from typing import Any, Mapping

from .checkpoint import Checkpoint, latest_checkpoint
from .errors import TtaError, UsageError

log = logging.getLogger("tta.runs")

LOCK_FILE = "train.lock"


def has_params(component: Any) -> bool:
    """Whether a component has weights to train and load (Griffin-Lim and processes do not)."""
    import torch

    return isinstance(component, torch.nn.Module) and any(True for _ in component.parameters())


def stages_training(recipe: Any, name: str) -> list[str]:
    """The stages of the recipe whose ``trains:`` lists component ``name``, in order."""
    return [s.get("name") for s in (recipe.get("train") or [])
            if isinstance(s, Mapping) and name in (s.get("trains") or [])]


def default_run_dir(recipe: Any) -> Path:
    """Where a recipe's runs go: ``Recipe.run_dir`` (its ``run_dir:``, else ``runs/<name>``).
    ``recipe`` is a Recipe, or a recipe name."""
    if isinstance(recipe, str):
        return Path("runs") / recipe
    return recipe.run_dir


def weights_file(component: str, ema: bool = False) -> str:
    return f"{component}.ema.safetensors" if ema else f"{component}.safetensors"


@dataclass(frozen=True)
class FoundWeights:
    component: str
    stage: str
    checkpoint: Checkpoint
    ema: bool

    @property
    def path(self) -> Path:
        return self.checkpoint.path / weights_file(self.component, self.ema)

    def load(self, device: str = "cpu") -> dict:
        return self.checkpoint.weights(weights_file(self.component, self.ema)[: -len(".safetensors")], device)


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def checkpoints(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoints"

    def latest(self, stage: str) -> Checkpoint | None:
        return latest_checkpoint(self.checkpoints(stage))

    def given_weights(self, component: str) -> Path | None:
        """``weights/<component>.safetensors``: weights the run was given rather than trained."""
        path = self.root / "weights" / weights_file(component)
        return path if path.is_file() else None

    def find_weights(self, component: str, stages: list[str], prefer_ema: bool = True) -> FoundWeights | None:
        """The newest weights of ``component`` among ``stages`` (searched last to first)."""
        for stage in reversed(stages):
            ckpt = self.latest(stage)
            if ckpt is None:
                continue
            for ema in ((True, False) if prefer_ema else (False,)):
                if (ckpt.path / weights_file(component, ema)).exists():
                    return FoundWeights(component, stage, ckpt, ema)
        return None


class StageLock:
    """One training run at a time per stage folder: ``<stage>/train.lock``.

    The file is locked with ``flock``, which the kernel drops when the holder exits in any way
    (kill -9 included), so a lock left by a dead run never blocks: the next run takes it over
    and says so. The file records the holder's pid, host and start time for the message a
    second run gets. Where ``flock`` is missing (or the filesystem refuses it) the recorded
    pid decides: a lock of a process that no longer runs on this host is taken over; one from
    another host, which cannot be checked from here, is refused with a hint.
    """

    def __init__(self, stage_dir: str | os.PathLike):
        self.path = Path(stage_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a UsageError naming the run that holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                # the holder removes the file on release: a file locked after that is no longer
                # the one at this path, and the lock has to be taken again on the new one
                if self._lock(fd) and _same_file(fd, self.path):
                    self._fd = fd
            except BaseException:
                os.close(fd)
                raise
            if self._fd is None:
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous:
                log.warning("taking over %s: the run that held it (%s) is no longer running", self.path, previous)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"pid {os.getpid()}\nhost {socket.gethostname()}\n"
                         f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            return
        raise TtaError(f"could not take the lock {self.path}: it keeps being replaced by another run")

    def _lock(self, fd: int) -> bool:
        """Take the lock on ``fd``; a lock held by a running process is a UsageError."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return self._lock_by_pid(fd)
            raise self._busy(_read_holder(fd))
        return self._lock_by_pid(fd)

    def _lock_by_pid(self, fd: int) -> bool:
        holder = _read_holder(fd)
        fields = dict(part.split(" ", 1) for part in holder.split(", ") if " " in part)
        pid, host = fields.get("pid", ""), fields.get("host")
        if not pid.isdigit() or (int(pid) == os.getpid() and host == socket.gethostname()):
            return True
        if host != socket.gethostname():
            raise self._busy(holder, f"If that run has ended, delete {self.path}.")
        if _pid_alive(int(pid)):
            raise self._busy(holder)
        return True

    def _busy(self, holder: str, hint: str = "") -> UsageError:
        return UsageError(
            f"another training run is writing {self.path.parent}: the lock {self.path} is held by "
            f"{holder or 'another process'}. Wait for that run to finish or stop it (or train into "
            f"another folder with --run-dir); nothing was changed.{' ' + hint if hint else ''}"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:  # already gone, or the folder became read-only: the flock still goes below
            pass
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StageLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> str:
    """``pid 123, host h, since ...`` from a lock file, or '' when it is empty."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096).decode(errors="replace")
    except OSError:
        return ""
    return ", ".join(line.strip() for line in data.splitlines() if line.strip())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True
