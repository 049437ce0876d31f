"""Weights on disk: the only file of lipsync/models that reads or writes files.

- `load_audio_encoder(path)`: a user-supplied torch file compatible with SyncTalk_2D's
  `audio_visual_encoder.pth` (keys `0.conv_block.0.weight`, ...), with or without the
  `audio_encoder.` prefix, with or without DDP's `module.` prefix, or a whole SyncNet state dict
  (its `audio_encoder.*` part is taken). Read with `weights_only=True`: no pickled code runs.
- `save_state` / `load_state`: our own weights, as safetensors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, safe_open, save_model
from torch import nn

from lipsync.errors import InputError
from lipsync.models.audio_encoder import AudioEncoder

_DDP_PREFIX = "module."
_ENCODER_PREFIX = "audio_encoder."
_OPTIONAL_SUFFIX = "num_batches_tracked"  # BatchNorm counters: absent from some exported files
_MAX_NAMED_KEYS = 3  # how many offending keys an error message lists


def load_audio_encoder(path: str | Path) -> AudioEncoder:
    """Build an AudioEncoder from a local torch weights file; InputError(path, ...) if it does not fit."""
    state = read_state_dict(path)
    state = _canonical_audio_encoder_keys(state)
    encoder = AudioEncoder()
    expected = encoder.state_dict()
    problem = _state_mismatch(expected, state, allow_missing_counters=True)
    if problem:
        raise InputError(path, f"not an AudioEncoder weights file: {problem}")
    for key, value in expected.items():  # keep the module's counters where the file has none
        if key.endswith(_OPTIONAL_SUFFIX):
            state.setdefault(key, value)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def read_torch_file(path: str | Path, what: str = "torch weights file") -> Any:
    """`torch.load(path, weights_only=True)` (never runs pickled code); InputError naming the file
    when it is missing, truncated, not a torch file, or a pickle that needs code to load."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a file can fail to load is the file's problem
        raise InputError(path, f"cannot read as a {what} ({type(exc).__name__}: {exc})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict (names -> tensors) from a torch file, unwrapping {"state_dict": ...} checkpoints."""
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Wav2Lip-style checkpoint {"state_dict": ..., "optimizer": ...}
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(path, "expected a state dict (a mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(path, f"state dict entry {bad[0]!r} is not a named tensor")
    return dict(obj)


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _canonical_audio_encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys to AudioEncoder's own (`audio_encoder.<i>.conv_block...`).

    A file whose keys are partly `audio_encoder.*` is a larger net (a SyncNet): keep that part.
    """
    state = {_strip(k, _DDP_PREFIX): v for k, v in state.items()}
    prefixed = {k: v for k, v in state.items() if k.startswith(_ENCODER_PREFIX)}
    if prefixed and len(prefixed) < len(state):
        state = {k[len(_ENCODER_PREFIX) :]: v for k, v in prefixed.items()}
    return {k if k.startswith(_ENCODER_PREFIX) else _ENCODER_PREFIX + k: v for k, v in state.items()}


def _state_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], allow_missing_counters: bool = False
) -> str:
    """'' when `found` fits `expected`, else what is wrong, naming the first offending keys."""
    missing = [
        k for k in expected if k not in found and not (allow_missing_counters and k.endswith(_OPTIONAL_SUFFIX))
    ]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [
        f"{k} (file {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in found and found[k].shape != expected[k].shape
    ]
    for label, items in (("missing key", missing), ("unexpected key", unexpected), ("shape mismatch for", wrong_shape)):
        if items:
            more = f" and {len(items) - _MAX_NAMED_KEYS} more" if len(items) > _MAX_NAMED_KEYS else ""
            return f"{label} {', '.join(items[:_MAX_NAMED_KEYS])}{more}"
    return ""


def save_state(module: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write `module`'s state dict to a local safetensors file (atomically: temp file, then rename).

    `metadata` (str -> str) is stored in the file header, e.g. the architecture config as JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_model(module, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(module: nn.Module, path: str | Path) -> dict[str, str]:
    """Load a safetensors file written by `save_state` into `module` (strict); return its metadata.

    InputError(path, ...) when the file is missing, unreadable, or does not fit the module.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read as a safetensors file ({exc})") from exc
    expected = module.state_dict()
    problem = _state_mismatch(expected, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
    if problem:
        raise InputError(path, f"weights do not fit {type(module).__name__}: {problem}")
    load_model(module, str(path), strict=True)
    return metadata
