"""Device, precision and seeding, resolved once from config strings (no hard-coded .cuda())."""

from __future__ import annotations

import contextlib
import random
from typing import ContextManager

import numpy as np
import torch

from lipsync.errors import InputError


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise InputError(None, f"unknown device {name!r} (choose auto, cpu or cuda)")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool) -> ContextManager:
    """bf16 autocast for forward passes on CUDA; a no-op on CPU (where bf16 is slower here)."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed torch (model initialisation), numpy and random. Data order and items do not rely on
    these global generators (see lipsync.data.dataset); this covers everything else."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
