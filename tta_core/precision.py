"""Numeric precision of training and sampling: ``fp32``, ``bf16``, ``fp16``, or ``auto``.

``auto`` is bf16 where the device computes it natively (a CUDA GPU that supports it, or a
CPU with AVX512-BF16 / AMX), else fp32. bf16 asked for explicitly on a CPU without native
support still runs, emulated, and a warning says it will be many times slower than fp32.
"""

from __future__ import annotations

import logging

import torch

from .errors import UsageError

log = logging.getLogger("tta")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision to run in on ``device``: ``auto`` resolved; the others as given."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        log.warning("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so it is emulated and "
                    "runs many times slower than fp32; use precision: auto (or fp32) here")
    return precision
