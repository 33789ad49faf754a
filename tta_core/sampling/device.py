"""The device a sample graph (or a training run) runs on."""

from __future__ import annotations

import torch

from ..errors import UsageError


def pick_device(device: str | None) -> torch.device:
    """``device`` as a torch device; None or ``auto``: CUDA when available, else the CPU. A CUDA
    request on a machine without CUDA is a UsageError, so nothing silently runs elsewhere."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: {exc}") from None
