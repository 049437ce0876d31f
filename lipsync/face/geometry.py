"""The one geometry module: landmark clean-up, crop boxes, crops, masks, paste-back, template order.

Conventions (docs/ARCHITECTURE.md): images are (H, W, 3) uint8 BGR; landmarks are float32 (P, 2)
pixel (x, y) with P = 468 for Face Mesh; a box is (x0, y0, x1, y1) ints, square, and may extend
past the frame. The model crop is (S + 2m)^2 with m = the model preset's crop_margin
(configs/models.yaml); the model sees the inner S x S. See docs/GEOMETRY.md for the landmark choice and measured box sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from lipsync.config import GeometryConfig

Box = tuple[int, int, int, int]

# Face Mesh points of the mouth-opening measure: inner lips (upper 13, lower 14) and the outer eye
# corners (33, 263), whose distance makes the aperture independent of the face's size in the frame.
INNER_LIP_TOP, INNER_LIP_BOTTOM = 13, 14
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263


def mouth_aperture(landmarks: np.ndarray) -> np.ndarray:
    """(..., 468, 2) landmarks -> (...) inner-lip opening / inter-ocular distance (0 = closed)."""
    lms = np.asarray(landmarks, np.float32)
    opening = np.linalg.norm(lms[..., INNER_LIP_TOP, :] - lms[..., INNER_LIP_BOTTOM, :], axis=-1)
    eyes = np.linalg.norm(lms[..., EYE_OUTER_RIGHT, :] - lms[..., EYE_OUTER_LEFT, :], axis=-1)
    return opening / np.maximum(eyes, 1e-6)


# --- landmarks over time -------------------------------------------------------------------------


def fill_missing(landmarks: Sequence[np.ndarray | None]) -> tuple[np.ndarray, list[int]]:
    """Fill frames without a face: linear interpolation between the nearest frames with a face,
    the nearest detected value before the first / after the last detection.

    Returns (N, P, 2) float32 and the sorted indices of the frames that were filled.
    Raises ValueError when no frame has landmarks or the shapes differ.
    """
    missing = [i for i, lms in enumerate(landmarks) if lms is None]
    known = np.array([i for i, lms in enumerate(landmarks) if lms is not None], dtype=np.int64)
    if known.size == 0:
        raise ValueError(f"no face landmarks in any of the {len(landmarks)} frames")
    shapes = {np.shape(landmarks[i]) for i in known}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != 2:
        raise ValueError(f"landmarks must all have one (P, 2) shape, got {sorted(shapes)}")
    values = np.stack([np.asarray(landmarks[i], dtype=np.float64) for i in known])  # (K, P, 2)

    frames = np.arange(len(landmarks))
    # Per frame: the known frames on either side (clipped at the ends), the right one's weight.
    left = np.clip(np.searchsorted(known, frames, side="right") - 1, 0, known.size - 1)
    right = np.minimum(left + 1, known.size - 1)
    span = known[right] - known[left]
    weight = np.where(span > 0, (frames - known[left]) / np.maximum(span, 1), 0.0)
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]  # (N, 1, 1); ends -> nearest value
    filled = (1.0 - weight) * values[left] + weight * values[right]  # (N, P, 2)
    return filled.astype(np.float32), missing


def smooth(landmarks: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over time of (N, P, 2) landmarks; returns the same shape, float32.

    Near the ends the window shrinks symmetrically (frame i averages frames i-h'..i+h' with
    h' = min(h, i, N-1-i)), so the average stays centred and a face moving at constant speed is
    not dragged towards the ends. `window` is odd; 1 returns the input unchanged.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window must be a positive odd number of frames, got {window}")
    landmarks = np.asarray(landmarks)
    if window == 1 or len(landmarks) < 3:
        return landmarks.astype(np.float32, copy=True)
    n = len(landmarks)
    frames = np.arange(n)
    half = np.minimum(np.minimum(window // 2, frames), n - 1 - frames)  # (N,)
    # Prefix sums in float64: sum of frames [a, b) = csum[b] - csum[a].
    csum = np.cumsum(landmarks, axis=0, dtype=np.float64)
    csum = np.concatenate([np.zeros_like(csum[:1]), csum])  # (N + 1, P, 2)
    sums = csum[frames + half + 1] - csum[frames - half]  # (N, P, 2)
    return (sums / (2 * half + 1)[:, None, None]).astype(np.float32)


# --- crop boxes ----------------------------------------------------------------------------------


def crop_box(lms: np.ndarray, cfg: GeometryConfig) -> Box:
    """The seed's square lower-face box from one frame's (P, 2) landmarks.

    x from the left jaw point to the right jaw point, y from the nose bridge down by the same
    side (which reaches below the chin); `cfg.box_expand` then grows it about its centre.
    """
    return tuple(int(v) for v in crop_boxes(np.asarray(lms)[None], cfg)[0])  # type: ignore[return-value]


def crop_boxes(lms: np.ndarray, cfg: GeometryConfig) -> np.ndarray:
    """`crop_box` for every frame of (N, P, 2) landmarks -> (N, 4) int64 boxes (x0, y0, x1, y1)."""
    lms = np.asarray(lms, dtype=np.float64)
    x_a = lms[:, cfg.jaw_left, 0]
    x_b = lms[:, cfg.jaw_right, 0]
    x_min = np.minimum(x_a, x_b)  # mirrored input must not give a negative width
    side = np.abs(x_b - x_a)
    y_min = lms[:, cfg.nose_bridge, 1]
    if np.any(side < 2.0):
        bad = int(np.argmax(side < 2.0))
        raise ValueError(f"degenerate face box at frame {bad}: jaw width {side[bad]:.1f} px")
    # Grow about the centre of the seed's square by box_expand (1.0 = exactly the seed's box).
    grow = side * (cfg.box_expand - 1.0)
    x0 = np.rint(x_min - grow / 2)
    y0 = np.rint(y_min - grow / 2)
    side = np.maximum(np.rint(side + grow), 2.0)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)


def _check_box(box: Sequence[int]) -> tuple[int, int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    side = x1 - x0
    if side <= 0 or y1 - y0 != side:
        raise ValueError(f"box must be square with a positive side, got {tuple(box)}")
    return x0, y0, x1, y1, side


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize: area averaging when shrinking (no aliasing), bilinear when enlarging."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interpolation = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interpolation)


def crop(frame: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """Cut `box` out of `frame` and resize it to (size, size, 3).

    Parts of the box outside the frame repeat the frame's edge pixels (cv2.BORDER_REPLICATE), so
    the crop is valid for any box, even one entirely outside the frame (then it is the nearest
    edge pixel).
    """
    x0, y0, x1, y1, _ = _check_box(box)
    height, width = frame.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        patch = frame[y0:y1, x0:x1]
    elif x0 < width and y0 < height and x1 > 0 and y1 > 0:
        # Partly outside: pad the in-frame part by repeating its edge pixels.
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        patch = cv2.copyMakeBorder(
            frame[fy0:fy1, fx0:fx1], fy0 - y0, y1 - fy1, fx0 - x0, x1 - fx1, cv2.BORDER_REPLICATE
        )
    else:
        # Entirely outside: clamping the sampled rows/columns is the same edge replication.
        rows = np.clip(np.arange(y0, y1), 0, height - 1)
        cols = np.clip(np.arange(x0, x1), 0, width - 1)
        patch = frame[rows[:, None], cols[None, :]]  # (side, side, 3)
    if patch.shape[0] == size:
        return patch.copy()  # never hand out a view into the caller's frame
    return _resize(patch, size)


def to_crop_coords(points: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """Map (..., 2) frame pixel coordinates into the coordinates of `crop(frame, box, size)`."""
    x0, y0, _, _, side = _check_box(box)
    offset = np.asarray(points, dtype=np.float32) - np.array([x0, y0], np.float32)
    return (offset * (size / side)).astype(np.float32)


# --- model input ---------------------------------------------------------------------------------


def inner(crop_full: np.ndarray, margin: int) -> np.ndarray:
    """The model's S x S view of an (S + 2m)^2 crop: crop_full[m:-m, m:-m] (a view, not a copy)."""
    if margin < 0 or 2 * margin >= min(crop_full.shape[:2]):
        raise ValueError(f"margin {margin} does not fit a {crop_full.shape[:2]} crop")
    if margin == 0:
        return crop_full
    return crop_full[margin:-margin, margin:-margin]


def mask_rect(size: int, cfg: GeometryConfig) -> Box:
    """cfg.mask_box (fractions of S) as end-exclusive pixel bounds (x0, y0, x1, y1) in S x S."""
    fx0, fy0, fx1, fy1 = cfg.mask_box
    return round(fx0 * size), round(fy0 * size), round(fx1 * size), round(fy1 * size)


def mask_lower_face(img: np.ndarray, cfg: GeometryConfig) -> np.ndarray:
    """A copy of the S x S model crop with the lower-face rectangle (cfg.mask_box) set to 0."""
    if img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square S x S crop, got {img.shape}")
    x0, y0, x1, y1 = mask_rect(img.shape[0], cfg)
    out = img.copy()
    out[y0:y1, x0:x1] = 0
    return out


# --- paste-back ----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def feather_mask(side: int, feather: float) -> np.ndarray:
    """(side, side, 1) float32 blend weights: 1 in the centre, falling smoothly to ~0 over
    round(feather * side) pixels at every edge, so a pasted crop leaves no square seam.

    Cached per (side, feather): paste-back runs once per rendered frame and sides repeat.
    Treat the result as read-only.
    """
    ramp_px = round(feather * side)
    if ramp_px <= 0:
        weights = np.ones(side, np.float32)
    else:
        dist = np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5  # pixel centre to nearest edge
        t = np.clip(dist / ramp_px, 0.0, 1.0)
        weights = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no kink where it reaches 1
    mask = np.outer(weights, weights)[:, :, None]  # separable: corners fade along both edges
    mask.setflags(write=False)
    return mask


def paste_back(
    frame: np.ndarray,
    box: Sequence[int],
    crop_full: np.ndarray,
    cfg: GeometryConfig,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blend an (S + 2m)^2 crop back into `frame` at `box` with a feathered edge.

    Returns a new frame, or writes into `out` (which may be `frame` itself) when given. Only the
    part of the box inside the frame is written; pixels outside the box are never touched.
    """
    x0, y0, x1, y1, side = _check_box(box)
    height, width = frame.shape[:2]
    if out is None:
        out = frame.copy()
    elif out is not frame:
        np.copyto(out, frame)
    # The box clipped to the frame, and the matching window of the box-sized patch.
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if fx0 >= fx1 or fy0 >= fy1:
        return out  # box entirely outside the frame: nothing to paste
    patch = _resize(crop_full, side)  # (side, side, 3)
    alpha = feather_mask(side, cfg.feather)  # (side, side, 1)
    window = np.s_[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    region = out[fy0:fy1, fx0:fx1].astype(np.float32)
    blended = region + alpha[window] * (patch[window].astype(np.float32) - region)
    out[fy0:fy1, fx0:fx1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


# --- template order ------------------------------------------------------------------------------


def bounce(k: int, n: int) -> int:
    """Template frame for output frame k: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (period 2n - 2).

    A pure function of k, so render shards can start anywhere. n == 1 always gives 0.
    """
    if n < 1:
        raise ValueError(f"need at least one template frame, got n={n}")
    if k < 0:
        raise ValueError(f"output frame index must be >= 0, got k={k}")
    if n == 1:
        return 0
    period = 2 * n - 2
    r = k % period
    return r if r < n else period - r
