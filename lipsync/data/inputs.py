"""The generator's input and output image conventions, shared by training and rendering.

Both sides MUST build inputs here so that a character renders exactly as it was trained:
crops are uint8 BGR (S, S, 3); the model sees float32 (C, S, S) in [0, 1], channels = the
reference crop (3) followed by the lower-face-masked crop of the frame being generated (3).
"""

from __future__ import annotations

import numpy as np

from lipsync.config import GeometryConfig
from lipsync.face.geometry import mask_lower_face


def to_chw(img: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) -> float32 (3, S, S) in [0, 1]."""
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0


def generator_input(reference: np.ndarray, frame: np.ndarray, geometry: GeometryConfig) -> np.ndarray:
    """(S, S, 3) uint8 reference crop + (S, S, 3) uint8 frame crop -> (6, S, S) float32."""
    return np.concatenate([to_chw(reference), to_chw(mask_lower_face(frame, geometry))], axis=0)


def to_image(output: np.ndarray) -> np.ndarray:
    """float (3, S, S) in [0, 1] -> uint8 (S, S, 3)."""
    return np.clip(np.rint(output.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
