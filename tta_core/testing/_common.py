"""What every check of the conformance kit shares: the error, the failure message, devices,
tolerant comparisons and a read-only guard for folders a component must not change."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import torch


class ConformanceError(AssertionError):
    pass


def _fail(component: Any, message: str) -> None:
    """Raise a ConformanceError naming ``component``: a string as is, a function or class by
    its name, any other object by its type's name."""
    import inspect

    if isinstance(component, str):
        name = component
    elif inspect.isfunction(component) or inspect.ismethod(component) or inspect.isclass(component):
        name = component.__name__
    else:
        name = type(component).__name__
    raise ConformanceError(f"{name}: {message}")


def devices() -> list[str]:
    """The devices to check on: the CPU, plus CUDA when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _eval(component: Any) -> Any:
    if isinstance(component, torch.nn.Module):
        component.eval()
    return component


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 1e-4) -> bool:
    return a.shape == b.shape and torch.allclose(a.float().cpu(), b.float().cpu(), atol=atol, rtol=rtol)


def _moved(component: Any, *args: Any) -> Any:
    moved = copy.deepcopy(component)
    return moved.to(*args) if isinstance(moved, torch.nn.Module) else moved


def _check_finite(component: Any, name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        _fail(component, f"{name} has NaN or Inf values")


def snapshot(paths: Iterable[str | os.PathLike]) -> dict[Path, str]:
    """Every file under ``paths`` (files or folders) -> the sha256 of its bytes; a folder
    itself -> "dir", so an added or removed folder shows too."""
    out: dict[Path, str] = {}
    for root in map(Path, paths):
        if root.is_file():
            out[root] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            out[root] = "dir"
            for path in sorted(root.rglob("*")):
                out[path] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest() \
                    if path.is_file() else "other"
    return out


def changes(before: dict[Path, str], after: dict[Path, str]) -> list[str]:
    """What differs between two snapshots, one line per path, sorted."""
    lines = [f"added {p}" for p in after if p not in before]
    lines += [f"removed {p}" for p in before if p not in after]
    lines += [f"changed {p}" for p in before if p in after and before[p] != after[p]]
    return sorted(lines)
