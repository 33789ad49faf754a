"""Numeric precision of training and sampling: ``fp32``, ``bf16``, ``fp16``, or ``auto``.

``auto`` is bf16 where the device computes it natively (a CUDA GPU that supports it, or a
CPU with AVX512-BF16 / AMX), else fp32. bf16 asked for explicitly on a CPU without native
support still runs, emulated, and a warning says it will be many times slower than fp32.

This module is the one list of precisions: the recipe schema, the command-line choices, the
trainer and the sampler all read it. It imports torch only inside its functions, so the
recipe validator and the CLI can use the list before torch is needed.
"""

from __future__ import annotations

import logging
import typing
from typing import Any

from .errors import UsageError

log = logging.getLogger("tta")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: A recipe's or a caller's precision (the annotation the recipe validator checks).
Precision = typing.Literal[PRECISIONS]  # type: ignore[valid-type]

#: accelerate's ``mixed_precision`` for each precision a run resolves to.
ACCELERATE = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def autocast_dtype(precision: str) -> Any:
    """The torch dtype to autocast to under a resolved precision; None for fp32 (no autocast)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_bf16(device: Any) -> bool:
    """Whether ``device`` (a torch.device or its name) computes bf16 natively (not emulated)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: Any) -> str:
    """The precision to run in on ``device``: ``auto`` resolved; the others as given."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        log.warning("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so it is emulated and "
                    "runs many times slower than fp32; use precision: auto (or fp32) here")
    return precision
