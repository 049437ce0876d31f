"""Face geometry: landmarks (MediaPipe Face Mesh), crop boxes, crops, masks, paste-back, bounce.

`geometry` is numpy + cv2 only; `landmarks` imports mediapipe lazily, when a detector is built.
"""

from lipsync.face.geometry import (
    bounce,
    crop,
    crop_box,
    crop_boxes,
    feather_mask,
    fill_missing,
    inner,
    mask_lower_face,
    mask_rect,
    paste_back,
    smooth,
    to_crop_coords,
)
from lipsync.face.landmarks import N_LANDMARKS, FaceMeshDetector

__all__ = [
    "N_LANDMARKS",
    "FaceMeshDetector",
    "bounce",
    "crop",
    "crop_box",
    "crop_boxes",
    "feather_mask",
    "fill_missing",
    "inner",
    "mask_lower_face",
    "mask_rect",
    "paste_back",
    "smooth",
    "to_crop_coords",
]
