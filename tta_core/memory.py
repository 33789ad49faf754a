"""Memory estimates made before a run: what a call would need, what the machine can give.

A long ``--duration`` or a large batch can need more memory than the machine has; without an
estimate the run grows for minutes and then dies. :func:`peak_bytes` runs the call on fake
tensors (shapes, dtypes and devices only, no data) and records how many bytes its tensors
would hold at most, so the answer costs no memory and about as long as one op-by-op pass
through the network's code (a second at most for a small U-Net, whatever the input's length),
for any plugin's network: nothing here knows which model it measures. :func:`available_bytes` says what the device has
free, cgroup limits included, and :func:`format_bytes` writes either for people.

Example, the peak of one denoiser call on a latent far longer than it was trained on::

    from tta_core.memory import Spec, available_bytes, format_bytes, peak_bytes

    with torch.no_grad():
        need = peak_bytes(unet, Spec((2, 8, 25_000, 16)), Spec((2,)), cond)
    have = available_bytes("cpu")
    if need is not None and have is not None and need > have:
        print(f"needs about {format_bytes(need)}, {format_bytes(have)} free")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import typing
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

log = logging.getLogger(__name__)

# Where Linux says how much memory is free; module constants so tests can point them elsewhere.
MEMINFO = Path("/proc/meminfo")
SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")  # cgroup v2: memory.max, memory.current, memory.stat
CGROUP_V1_ROOT = Path("/sys/fs/cgroup/memory")  # cgroup v1: memory.limit_in_bytes, memory.usage_in_bytes
# cgroup v1 writes "no limit" as a page-rounded 2**63 - 1; anything this large is no limit
_NO_LIMIT = 1 << 60


@dataclasses.dataclass(frozen=True)
class Spec:
    """A tensor to be made for the estimate: its shape, dtype and device, never its data.

    Pass one to :func:`peak_bytes` where the real call would get a tensor too large to make
    just to ask the question. Its bytes count towards the peak, as the real call needs them.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    requires_grad: bool = False


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage an op allocates until that storage is freed.

    An op whose schema marks its result as an alias of an input (a view, an in-place or out=
    op) allocates nothing: its result shares a storage that is either tracked already or was
    there before the estimate (a parameter, a buffer, a real input), which does not count. A
    storage is counted once however many views share it, and uncounted when the last of them
    is gone (a finalizer on the storage object, which torch keeps alive exactly as long as the
    storage itself).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        self._grads: dict[int, tuple[torch.Tensor, Any]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in tree_flatten((args, kwargs))[0]:
            # a parameter's .grad as it was before a fake backward assigns a fake gradient to it
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad and tensor.is_leaf:
                self._grads.setdefault(id(tensor), (tensor, tensor.grad))
        out = func(*args, **(kwargs or {}))
        allocates = all(r.alias_info is None for r in func._schema.returns)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._see(tensor, allocates)
        self.peak = max(self.peak, self.live)
        return out

    def _see(self, tensor: torch.Tensor, allocates: bool) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
            return
        key, nbytes = id(storage), storage.nbytes()
        if key in self._sizes:  # resize_ (out= ops grow their output) changes a known storage
            self.live += nbytes - self._sizes[key]
            self._sizes[key] = nbytes
        elif allocates:
            self._sizes[key] = nbytes
            self.live += nbytes
            self._finalizers.append(weakref.finalize(storage, self._free, key))

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def restore_grads(self) -> None:
        for tensor, grad in self._grads.values():
            tensor.grad = grad

    def __exit__(self, *exc: Any) -> None:
        for finalizer in self._finalizers:
            finalizer.detach()  # storages that outlive the estimate must not call back into it
        return super().__exit__(*exc)


def _fake(value: Any, mode: Any) -> Any:
    """``value`` with every tensor in it (also inside lists, tuples, dicts and dataclasses such
    as Conditioning) made fake; a :class:`Spec` becomes a new fake tensor of its shape."""
    if isinstance(value, Spec):
        return torch.empty(value.shape, dtype=value.dtype, device=value.device, requires_grad=value.requires_grad)
    if isinstance(value, torch.Tensor):
        return mode.from_tensor(value)
    if isinstance(value, (list, tuple)):
        items = [_fake(v, mode) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        out = copy.copy(value)  # keeps the mapping's type (OrderedDict, defaultdict, ...)
        for key, item in value.items():
            out[key] = _fake(item, mode)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _fake(getattr(value, f.name), mode) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def peak_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int | None:
    """The most bytes ``fn(*args, **kwargs)`` would hold in tensors at once, found without
    allocating them: ``fn`` runs on fake tensors, which carry shapes but no data.

    What counts: every tensor ``fn`` makes (activations, what autograd saves for backward,
    gradients, temporaries), while it is alive, and the inputs given as :class:`Spec`. What
    does not: parameters, buffers and real tensors passed in, which already exist (resident
    before the call, they are not the call's to ask for). Views count once with the storage
    they share. Allocator rounding and the scratch memory inside an op are not seen (cuDNN
    workspaces; the im2col buffer a CPU convolution takes on small inputs, which can be
    several times its input), so the real peak runs somewhat higher: the number answers
    "will this fit", with a margin, not an accounting question.

    ``fn`` is any callable: a denoiser forward (under ``torch.no_grad()`` as sampling runs it,
    or with grad and ``.backward()`` inside ``fn`` for a training step), an autoencoder decode,
    a vocoder. Pass large inputs as :class:`Spec`; tensors, also inside lists, dicts and
    dataclasses such as Conditioning, become fake copies. Parameters stay real and unchanged:
    the ``.grad`` of every parameter ``fn`` uses is put back as it was (a backward would
    otherwise leave fake gradients on the real model). An optimizer step inside ``fn`` is
    not supported.

    Returns None, not an error, when the estimate is unavailable: ``fn`` needs the data
    itself (``.item()``, ``nonzero``, ``if tensor:``, ``.numpy()``) or an op has no fake
    implementation. Run it for real then; the reason is logged at debug level.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = _LiveBytes()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, tracker:
            fn(*_fake(args, mode), **_fake(kwargs, mode))
    except Exception as error:  # the estimate is optional; the real run reports real errors
        log.debug("no memory estimate for %r: %s: %s", fn, type(error).__name__, error)
        return None
    finally:
        tracker.restore_grads()
    return tracker.peak


def measured_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The most bytes ``fn(*args, **kwargs)`` held in tensors at once when run for real, counted
    as :func:`peak_bytes` counts them (inputs, parameters and buffers not included).

    For a part whose code needs the data, where :func:`peak_bytes` has no answer: run it on a
    short input and scale the result to the long one (see ``Pipeline.memory_needed``)."""
    tracker = _LiveBytes()
    try:
        with tracker:
            fn(*args, **kwargs)
    finally:
        tracker.restore_grads()
    return tracker.peak


def step_peaks(step: Callable[[Any], Any], make: Callable[[int], Any], sizes: tuple[int, ...],
               real_sizes: tuple[int, ...], keep: tuple[Any, ...] = (), devices: tuple[Any, ...] = ()
               ) -> tuple[dict[int, int], str]:
    """The tensor peak of ``step(make(n))`` (a training step on a batch of ``n`` items) for each
    ``n`` in ``sizes``, counted on fake tensors (:func:`peak_bytes`: no memory, the same seconds
    at any size): ``(peaks, "fake")``. A step that needs its data (``.item()``, a branch on a
    tensor) runs for real instead, at the smaller ``real_sizes``, after one unmeasured call for
    what a first call makes once (:func:`measured_bytes`): ``(peaks, "real")``.

    Each call runs inside :func:`unchanged` for ``keep`` (the objective and its modules: what a
    call caches, fake or not, is put back) and with the random state of the CPU and of
    ``devices`` forked, so the training that follows is exactly as without the trial."""
    peaks: dict[int, int | None] = {}
    for n in sizes:
        with unchanged(*keep), torch.random.fork_rng(devices=list(devices)):
            peaks[n] = peak_bytes(step, make(n))
        if peaks[n] is None:
            break
    else:
        return typing.cast(dict[int, int], peaks), "fake"
    with unchanged(*keep), torch.random.fork_rng(devices=list(devices)):
        batches = {n: make(n) for n in real_sizes}
        measured_bytes(step, batches[real_sizes[0]])
        return {n: measured_bytes(step, batch) for n, batch in batches.items()}, "real"


def peak_at(peaks: dict[int, int], batch_size: int) -> int:
    """The peak of a step at ``batch_size`` from :func:`step_peaks`'s counts: the count where
    that size was tried, else the line through the two nearest tried sizes (activations grow
    linearly with the batch; a line that falls is taken as flat)."""
    if batch_size in peaks:
        return peaks[batch_size]
    sizes = sorted(peaks)
    if len(sizes) == 1:
        return peaks[sizes[0]]
    lo, hi = (sizes[-2], sizes[-1]) if batch_size > sizes[-1] else (sizes[0], sizes[1])
    per_item = max(0.0, (peaks[hi] - peaks[lo]) / (hi - lo))
    return int(peaks[lo] + per_item * (batch_size - lo))


@contextlib.contextmanager
def unchanged(*objects: Any) -> Iterator[None]:
    """Put ``objects`` (and, for modules, every submodule) back as they were on leaving: each
    attribute, and the contents of each dict or list attribute.

    Run an estimate inside it. Components often fill a cache on their first call (a process's
    per-device tables, a vocoder's window): filled under fake tensors, such a cache would hold
    fake tensors, and the real run that follows would fail on them.
    """
    seen: dict[int, Any] = {}
    for obj in objects:
        for item in (obj.modules() if isinstance(obj, torch.nn.Module) else [obj]):
            if hasattr(item, "__dict__"):
                seen.setdefault(id(item), item)
    saved = []
    for item in seen.values():
        attrs = dict(vars(item))
        contents = {k: copy.copy(v) for k, v in attrs.items() if type(v) in (dict, list)}
        saved.append((item, attrs, contents))
    try:
        yield
    finally:
        for item, attrs, contents in saved:
            state = vars(item)
            for key in [k for k in state if k not in attrs]:
                del state[key]
            state.update(attrs)
            for key, value in contents.items():
                live = attrs[key]
                if isinstance(live, dict):
                    live.clear()
                    live.update(value)
                else:
                    live[:] = value


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _stat(path: Path, key: str) -> int:
    """One counter of a cgroup memory.stat file, 0 when absent."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                number, *unit = line.split(":", 1)[1].split()
                return int(number) * (1024 if unit and unit[0].lower() == "kb" else 1)
    except (OSError, ValueError):
        return None
    return None


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path from /proc/self/cgroup: the v1 hierarchy holding
    ``controller``, or the v2 one for ``controller=""``; "/" where none is listed."""
    try:
        for line in SELF_CGROUP.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            names = [name for name in controllers.split(",") if name]
            if (controller in names) if controller else not names:  # v2's line is "0::/path"
                return path
    except (OSError, ValueError):
        pass
    return "/"


def _up_from(root: Path, path: str) -> list[Path]:
    """root/path and every folder above it up to root: a limit on any of them holds. Under a
    cgroup namespace the path is "/" and root is the container's own cgroup."""
    parts = [part for part in path.split("/") if part]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _headroom(folder: Path, limit_file: str, usage_file: str, reclaimable_key: str) -> int | None:
    """The cgroup's limit less what it holds, page cache it can drop not counted as held."""
    limit, used = _read_int(folder / limit_file), _read_int(folder / usage_file)
    if limit is None or used is None or limit >= _NO_LIMIT:
        return None
    return max(0, limit - max(0, used - _stat(folder / "memory.stat", reclaimable_key)))


def _cgroup_headroom() -> int | None:
    """Bytes the tightest cgroup limit on this process still allows, None without a limit."""
    found = [_headroom(folder, "memory.max", "memory.current", "inactive_file")
             for folder in _up_from(CGROUP_ROOT, _own_cgroup(""))]
    found += [_headroom(folder, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
              for folder in _up_from(CGROUP_V1_ROOT, _own_cgroup("memory"))]
    known = [n for n in found if n is not None]
    return min(known) if known else None


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Bytes the device can still give, or None where that is unknown.

    CUDA: the driver's free memory on that GPU (``torch.cuda.mem_get_info``). CPU: Linux's
    MemAvailable (free memory plus cache it can drop), lowered to the cgroup's headroom where
    a container or systemd limit is lower (cgroup v2 memory.max, v1 memory.limit_in_bytes,
    on the process's own cgroup and every one above it). None for other devices, and on a
    CPU where neither /proc/meminfo nor a cgroup limit says anything.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:  # a device index that does not exist, a driver in a bad state
            return None
    if device.type != "cpu":
        return None
    known = [n for n in (_meminfo_available(), _cgroup_headroom()) if n is not None]
    return min(known) if known else None


def format_bytes(n: int | float) -> str:
    """``n`` bytes for people, in decimal units as disks and ``free --si`` write them:
    "512 B", "3.2 GB", "512 MB"."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 999.5 or unit == "PB":  # 999.7 MB reads "1.0 GB", never "1000 MB"
            break
        size /= 1000
    if unit == "B":
        return f"{int(n)} B"
    return f"{size:.1f} {unit}" if abs(size) < 9.95 else f"{size:.0f} {unit}"
