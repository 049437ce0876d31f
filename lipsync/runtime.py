"""Device, precision and seeding: the one policy for train, render, eval and dub.

Every stage turns its config strings into a `torch.device` with `resolve_device`, runs forward
passes under `autocast(device, bf16)`, and seeds with `seed_everything`. Nothing else in the
package calls `.cuda()`, `torch.autocast` or a global seed.
"""

from __future__ import annotations

import contextlib
import random
import re
from typing import ContextManager

import numpy as np
import torch

from lipsync.errors import InputError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"  # what configs accept (lipsync.config.Device)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu"; "cuda" or "cuda:N" (N < the GPU count).

    A CUDA device this machine does not have is an input error, not a crash later.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.match(DEVICE_PATTERN, name):
        raise InputError(None, f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(None, f"device {name!r} requested but CUDA is not available on this machine "
                                   "(use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(None, f"device {name!r} requested but this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast_dtype(device: torch.device, bf16: bool) -> torch.dtype | None:
    """bf16 on GPUs that support it; None (full fp32) on the CPU or when disabled."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, bf16: bool) -> ContextManager:
    """The autocast context for forward passes on `device` (a no-op when autocast_dtype is None)."""
    dtype = autocast_dtype(device, bf16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed torch (model initialisation), numpy and random. Data order and items do not rely on
    these global generators (see lipsync.data.dataset); this covers everything else."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
