"""The one paint path: template frame -> crop -> model input -> generator -> image -> paste-back.

`lipsync render`, the dub actors and `lipsync eval` all paint through these functions, so eval
measures exactly what render ships (same crop, mask, precision, memory format and paste-back).
"""

from __future__ import annotations

import numpy as np
import torch

from lipsync.bundle import Character
from lipsync.config import RenderConfig
from lipsync.data.inputs import generator_input, to_image
from lipsync.face import geometry
from lipsync.runtime import autocast


def prepare_for_inference(character: Character, cfg: RenderConfig) -> None:
    """Put the generator in the memory format measured fastest (channels_last; see BENCHMARKS.md)."""
    if cfg.channels_last:
        character.generator.to(memory_format=torch.channels_last)


def model_crop(character: Character, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) frame -> its (S+2m, S+2m, 3) crop and the inner (S, S, 3) model view (a view into it)."""
    crop_full = geometry.crop(frame, box, character.crop_size)
    return crop_full, geometry.inner(crop_full, character.margin)


def model_input(character: Character, face: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 model view -> (6, S, S) float32: the frame as its own reference + its masked copy."""
    return generator_input(face, face, character.geometry)


def paint(character: Character, inputs: np.ndarray, audio: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Generator forward: (B, 6, S, S) + (B, *context_shape) -> (B, 3, S, S) float32 on the CPU."""
    device = next(character.generator.parameters()).device
    x = torch.from_numpy(inputs).to(device, non_blocking=True)
    a = torch.from_numpy(audio).to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, cfg.precision):
        out = character.generator(x, a)
    return out.float().cpu().numpy()


def painted_frame(character: Character, frame: np.ndarray, box: np.ndarray, crop_full: np.ndarray,
                  output: np.ndarray) -> np.ndarray | None:
    """The generated (3, S, S) mouth pasted into `frame`; None when the output is not finite."""
    if not np.isfinite(output).all():
        return None
    m, s = character.margin, character.size
    crop_full = crop_full.copy()
    crop_full[m:m + s, m:m + s] = to_image(output)
    return geometry.paste_back(frame, box, crop_full, character.geometry)
