"""Checkpoint I/O shared by every stage: atomic, and safe to load.

Layout of a stage's ``checkpoints/`` folder::

    checkpoints/
      step-00000400/
        <name>.safetensors     one file per weight set (model, ema, ...)
        state.json             step and everything else JSON can hold
        state.pt               tensors of the training state (optimizer, RNG, ...),
                               loadable with torch.load(weights_only=True)
      latest                   the selected checkpoint's folder name, written last

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed into
place; only then is ``latest`` replaced (itself through a temporary file and a rename). A crash
at any point leaves the previous checkpoint complete and selected. Loading never unpickles
arbitrary objects: weights are safetensors, state tensors go through ``weights_only=True``.

A file that cannot be read (truncated, overwritten by a disk fault) raises
:class:`CheckpointDamaged`, whose message names the file and the way out; nothing here ever
deletes a damaged checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import CheckpointError

LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointDamaged(CheckpointError):
    """A checkpoint file exists but cannot be read: truncated, overwritten, or not what its name says."""


def _damaged(path: Path, reason: Any) -> CheckpointDamaged:
    """The error for an unreadable file, with the next step when it lies in a checkpoint folder."""
    folder = path.parent
    if not _STEP_DIR.match(folder.name):
        return CheckpointDamaged(f"cannot read {path}: {reason}. The file is damaged (truncated or overwritten) "
                                 "or is not what its name says.")
    return CheckpointDamaged(
        f"checkpoint {folder} is damaged: cannot read {path.name} ({reason}); it was left in place. "
        f"To go back to the checkpoint before it, move this folder out of {folder.parent} "
        f"(e.g. mv {folder} {folder}.damaged); to start the stage over, train with --fresh."
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (where the filesystem allows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: Any) -> None:
    """``data``: bytes, or an iterable of buffers written one after another."""
    with open(path, "wb") as f:
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, data: Any) -> None:
    """Write a file so that readers see the old content or the new, never a part. ``data``:
    text, bytes, or an iterable of buffers (written in turn, none joined in memory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_file(tmp, data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _plain_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """Tensors that safetensors accepts: contiguous, and no two sharing memory."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state_dict.items():
        t = tensor.detach()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if not t.is_contiguous() or (ptr is not None and ptr in seen):
            t = t.contiguous().clone()
        elif ptr is not None and t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a larger buffer
        if ptr is not None:
            seen.add(ptr)
        out[key] = t.cpu()
    return out


#: bytes: where torch's CPU allocator places a tensor's data, and where :func:`save_weights`
#: places every tensor whose size allows it (see :func:`load_state`)
ALIGNMENT = 64

_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def _safetensors_chunks(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> list:
    """A safetensors file, as its header followed by each tensor's bytes (views of the CPU
    tensors, nothing copied), whose tensors start on :data:`ALIGNMENT`-byte boundaries of
    the file: the header is padded with spaces (as the format allows) to a multiple of it, and
    the tensors whose size is a multiple of it come first. The format allows no gap between
    tensors, so the others follow, largest element first (each still aligned to its element).
    Mapped into memory, a page-aligned copy of the file then holds the weights where torch
    would have allocated them. Any safetensors reader reads it."""
    import torch

    names = {name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()}
    if any(d not in _SAFETENSORS_DTYPES for d in names.values()):
        from safetensors.torch import save  # a dtype this writer does not name: the library's layout

        return [save(dict(tensors), metadata=dict(metadata) if metadata else None)]

    def size(t: Any) -> int:
        return t.numel() * t.element_size()

    order = sorted(tensors, key=lambda k: (size(tensors[k]) % ALIGNMENT != 0, -tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        header[name] = {"dtype": _SAFETENSORS_DTYPES[names[name]], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size(t)]}
        offset += size(t)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)
    return [len(text).to_bytes(8, "little") + text,
            *(tensors[k].reshape(-1).view(torch.uint8).numpy().data for k in order if tensors[k].numel())]


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict as safetensors (:func:`_safetensors_chunks`), atomically."""
    atomic_write(path, _safetensors_chunks(_plain_state_dict(state_dict), metadata))


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Read a safetensors state dict."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights not found: {path}")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:
        raise _damaged(path, _first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """``torch.load`` that only accepts tensors and plain containers.

    A file whose unpickling needs arbitrary classes or functions is refused: unpickling runs
    code, so such a file could do anything. Nothing in it is executed.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        unsafe = next((line for line in first if "GLOBAL" in line or "Unsupported global" in line), None)
        if unsafe is None:  # not a refused object but bytes that are no pickle at all
            reason = next((line for line in first if "Unsupported" in line), first[0] if first else "")
            raise _damaged(path, reason.strip() or "not a torch.save file") from None
        reason = unsafe
        raise CheckpointError(
            f"refusing to load {path}: it needs Python objects beyond tensors and plain "
            f"containers to unpickle ({reason.strip()}). Loading it could run arbitrary code. "
            "If you trust the file, convert it to a plain state dict or safetensors in a "
            "separate Python session."
        ) from None
    except EOFError:
        raise _damaged(path, "the file is empty") from None
    except (RuntimeError, OSError) as exc:
        raise _damaged(path, _first_line(exc)) from exc


@dataclass
class Checkpoint:
    """A checkpoint folder on disk."""

    path: Path
    step: int
    state: dict = field(default_factory=dict)

    def weights(self, name: str, device: str = "cpu") -> dict:
        return load_weights(self.path / f"{name}.safetensors", device=device)

    def has_weights(self, name: str) -> bool:
        return (self.path / f"{name}.safetensors").exists()

    def weight_names(self) -> list[str]:
        return sorted(p.name[: -len(".safetensors")] for p in self.path.glob("*.safetensors"))

    def tensors(self, device: str = "cpu") -> dict:
        path = self.path / "state.pt"
        return torch_load(path, map_location=device) if path.exists() else {}

    def read(self) -> "CheckpointContents":
        """Every file of the checkpoint, read into memory (on the CPU): a damaged one raises
        :class:`CheckpointDamaged` before anything is loaded into a model."""
        return CheckpointContents({name: self.weights(name) for name in self.weight_names()}, self.tensors())


@dataclass
class CheckpointContents:
    weights: dict  # weight-set name -> state dict
    tensors: dict  # what state.pt holds


def checkpoint_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """The complete checkpoint folders under ``root`` (those with a state.json), oldest first."""
    return _step_dirs(Path(root))


def resume_candidates(root: str | os.PathLike) -> list[Path]:
    """Checkpoint folders to resume from, best first: the selected one (see
    :func:`latest_checkpoint`), then the complete ones before it, newest first."""
    root = Path(root)
    dirs = _step_dirs(root)
    if not dirs:
        return []
    chosen = _selected(root)
    step = next((s for s, p in dirs if p == chosen), None)
    if step is None:
        step, chosen = dirs[-1]
    return [chosen] + [p for s, p in reversed(dirs) if s < step]


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    weights: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    file_metadata: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write ``root/step-<N>/`` atomically and select it in ``root/latest``.

    ``weights`` maps a name (``model``, ``ema``, ...) to a state dict; ``state`` must be
    JSON-serialisable; ``tensors`` holds tensor-valued state (optimizer, RNG) and plain
    containers of them. ``metadata`` goes into every weights file, ``file_metadata[name]``
    into that one's as well.
    """
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, state_dict in weights.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"weight set names are file names, got {name!r}")
            save_weights(tmp / f"{name}.safetensors", state_dict,
                         {**(metadata or {}), **(file_metadata or {}).get(name, {})})
        if tensors:
            import io

            buffer = io.BytesIO()
            torch.save(dict(tensors), buffer)
            _write_file(tmp / "state.pt", buffer.getvalue())
        body = {"step": step, **dict(state or {})}
        _write_file(tmp / "state.json", json.dumps(body, indent=2, sort_keys=True).encode())
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step replaces it
            old = root / f".old-step-{step:08d}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        atomic_write(root / LATEST, final.name + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _selected(root: Path) -> Path | None:
    """The complete checkpoint folder that ``latest`` names, if it names one."""
    marker = root / LATEST
    try:
        name = marker.read_text().strip()
    except (OSError, UnicodeDecodeError):  # no marker, or an unreadable one: the newest folder is chosen
        return None
    candidate = root / name
    return candidate if _STEP_DIR.match(name) and (candidate / "state.json").exists() else None


def latest_checkpoint(root: str | os.PathLike) -> Checkpoint | None:
    """The selected checkpoint: the one ``latest`` names, else the newest complete one."""
    root = Path(root)
    chosen = _selected(root)
    if chosen is None:
        dirs = _step_dirs(root)
        if not dirs:
            return None
        chosen = dirs[-1][1]
    return load_checkpoint(chosen)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.exists():
        raise CheckpointError(f"not a complete checkpoint (no state.json): {path}")
    try:
        state = json.loads(state_file.read_text())
        step = int(state.get("step", 0))
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise _damaged(state_file, _first_line(exc)) from exc
    return Checkpoint(path=path, step=step, state=state)


def list_checkpoints(root: str | os.PathLike) -> list[Checkpoint]:
    return [load_checkpoint(p) for _, p in _step_dirs(Path(root))]


_OLD_STEP = re.compile(r"^\.old-step-(\d+)-\d+$")


def clean_temporaries(root: str | os.PathLike) -> None:
    """Remove folders left by writes that were interrupted (never a complete checkpoint).

    A checkpoint being replaced by a re-save of its step is set aside as ``.old-step-*``
    first: when the process died before the new one took its place, it is put back."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        old = _OLD_STEP.match(p.name)
        if old and p.is_dir() and (p / "state.json").exists():
            final = root / f"step-{old.group(1)}"
            if not final.exists():
                os.replace(p, final)
                continue
        if p.name.startswith((".tmp-step-", ".old-step-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


_REFIT_HINT = ("Did the recipe change since these weights were written? "
               "(To load what fits when fine-tuning: --allow-partial.)")


def load_state(module: Any, state: Mapping[str, Any], source: str, strict: bool = True,
               hint: str = _REFIT_HINT) -> None:
    """Load ``state`` into ``module``. Strict: any missing, unexpected or reshaped key is an
    error listing them (then ``hint``). Not strict: load what fits and print what did not.
    A module built with :func:`empty_parameters` (placeholder parameters) cannot be copied
    into: it takes the tensors of ``state`` (a dict, emptied as it goes) as its own. A tensor
    read from a file by :func:`load_weights` is a private, copy-on-write map of the file:
    taken as it is when it has the module's dtype and sits on an :data:`ALIGNMENT` boundary
    (as every large tensor of a file :func:`save_weights` wrote does), nothing is allocated
    or copied and the file is never written. Any other tensor is copied into a fresh
    allocation in the module's dtype, one at a time. Either way the weights sit where torch's
    allocator would align them, so the kernels compute exactly as on a module loaded by
    copying. A parameter left without a value is an error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    lines = [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
    lines += [f"  shape: {k}: model {tuple(own[k].shape)}, file {tuple(state[k].shape)}" for k in mismatched]
    if strict and lines:
        more = f"\n  ... and {len(lines) - 40} more" if len(lines) > 40 else ""
        raise CheckpointError(f"weights in {source} do not fit {type(module).__name__}:\n" + "\n".join(lines[:40])
                              + more + (f"\n{hint}" if hint else ""))
    if lines:
        print(f"partial load from {source}: {len(missing)} missing, {len(unexpected)} unexpected, "
              f"{len(mismatched)} with other shapes (kept from initialisation)")
        print("\n".join(lines))
    fits = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not any(p.is_meta for p in module.parameters()):
        module.load_state_dict(fits, strict=False)
        return
    import torch

    moved = {}
    for key in list(fits):
        value = fits.pop(key)
        if isinstance(state, dict):
            state.pop(key, None)
        if value.dtype == own[key].dtype and value.data_ptr() % ALIGNMENT == 0:
            moved[key] = value  # the file's own tensor: nothing allocated, nothing copied
        else:
            moved[key] = torch.empty(value.shape, dtype=own[key].dtype, device=value.device).copy_(value)
        del value
    module.load_state_dict(moved, strict=False, assign=True)
    empty = [name for name, p in module.named_parameters() if p.is_meta]
    if empty:
        raise CheckpointError(f"weights in {source} leave {len(empty)} parameter(s) of {type(module).__name__} "
                              f"without a value: {', '.join(empty[:10])}")


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Modules built inside get their parameters as placeholders on the meta device: no
    memory and no initialisation, for networks whose every parameter is loaded next with
    :func:`load_state` (weights are then held once, and a large network builds
    in a fraction of the time). Buffers are built as usual (a mel filterbank, position ids)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def skipping_meta(init: Any) -> Any:
        # a placeholder has no values to draw (and torch's meta path of normal_ imports its compiler)
        def draw(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            return tensor if tensor.is_meta else init(tensor, *args, **kwargs)
        return draw

    inits = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    torch.nn.Module.register_parameter = on_meta
    for name, init in inits.items():
        setattr(torch.nn.init, name, skipping_meta(init))
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register
        for name, init in inits.items():
            setattr(torch.nn.init, name, init)


#: torch.nn.init's functions that draw or fill a tensor in place (skipped on placeholders)
_INITIALISERS = ("normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_",
                 "xavier_uniform_", "orthogonal_", "zeros_", "ones_", "constant_")
