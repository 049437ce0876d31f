"""Device, precision and seeding: the one policy for train, render, eval and dub.

Every stage turns its config strings into a `torch.device` with `resolve_device`, runs forward
passes under `autocast(device, precision)`, and seeds with `seed_everything`. Nothing else in the
package calls `.cuda()`, `torch.autocast` or a global seed.

Precision (`auto | fp32 | bf16`): `auto` is bf16 autocast where the hardware computes bf16
natively -- CUDA GPUs that support it, and CPUs with AVX512_BF16 or AMX (measured 1.37x faster
than fp32 for the st2d-328 generator on an EPYC with AVX512_BF16, docs/BENCHMARKS.md) -- and
fp32 elsewhere (emulated bf16 is slower). Training's `auto` uses bf16 on CUDA only: CPU training
in bf16 is not measured.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
from pathlib import Path
from typing import ContextManager

import numpy as np
import torch

from lipsync.errors import InputError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"  # what configs accept (lipsync.config.Device)
PRECISIONS = ("auto", "fp32", "bf16")  # what configs accept (lipsync.config.Precision)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


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


@functools.cache
def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU's flags include bf16 arithmetic (AVX512_BF16 or AMX); False when unknown."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast_dtype(device: torch.device, precision: str, *, training: bool = False) -> torch.dtype | None:
    """torch.bfloat16 for bf16 autocast, None for plain fp32 (see the module docstring for `auto`)."""
    if precision not in PRECISIONS:
        raise InputError(None, f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if training and device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16(device) else None


def autocast(device: torch.device, precision: str, *, training: bool = False) -> ContextManager:
    """The autocast context for forward passes on `device` (a no-op when autocast_dtype is None)."""
    dtype = autocast_dtype(device, precision, training=training)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed torch (model initialisation), numpy and random. Data order and items do not rely on
    these global generators (see lipsync.data.dataset); this covers everything else."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
