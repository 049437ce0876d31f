"""Device and precision, resolved once from strings ("auto", "cpu", "cuda", "cuda:1")."""

from __future__ import annotations

import torch

from lipsync.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(None, f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"device {name!r} requested but CUDA is not available on this machine")
    return device


def autocast_dtype(device: torch.device, bf16: bool) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it; None (full fp32) on the CPU or when disabled."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
