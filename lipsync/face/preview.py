"""Contact sheets of crops, for looking at what the geometry does (prepare reports, debugging)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _as_bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ValueError(f"expected a (H, W) or (H, W, 3) image, got {img.shape}")


def _fit_cell(img: np.ndarray, cell: int) -> np.ndarray:
    """Scale `img` to fit a cell x cell square keeping its aspect ratio, centred on black."""
    h, w = img.shape[:2]
    scale = cell / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img, (nw, nh), interpolation=interpolation)
    out = np.zeros((cell, cell, 3), np.uint8)
    top, left = (cell - nh) // 2, (cell - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def _put_label(img: np.ndarray, text: str) -> None:
    """Write `text` in the top-left corner, white on a black box so it reads on any image."""
    scale = max(0.3, img.shape[0] / 256)
    thickness = max(1, round(scale))
    (tw, th), baseline = cv2.getTextSize(text, _LABEL_FONT, scale, thickness)
    cv2.rectangle(img, (0, 0), (tw + 4, th + baseline + 4), (0, 0, 0), -1)
    cv2.putText(img, text, (2, th + 2), _LABEL_FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def contact_sheet(
    images: Sequence[np.ndarray], cols: int = 8, cell: int = 128, labels: Sequence[str | int] | None = None
) -> np.ndarray:
    """Grid of `images` (BGR or grey), each fitted into a cell x cell square with its label (by
    default its index in `images`; pass frame numbers as `labels`) in the top-left corner.

    Returns a (rows * cell, cols * cell, 3) uint8 BGR image; empty cells are black.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if cols < 1 or cell < 8:
        raise ValueError(f"need cols >= 1 and cell >= 8, got cols={cols} cell={cell}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    rows = -(-len(images) // cols)
    sheet = np.zeros((rows * cell, cols * cell, 3), np.uint8)
    for i, img in enumerate(images):
        tile = _fit_cell(_as_bgr(img), cell)
        _put_label(tile, str(labels[i]) if labels is not None else str(i))
        r, c = divmod(i, cols)
        sheet[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tile
    return sheet


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write `image` (BGR or grey uint8) as a PNG to a local path (parent folders are created)."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
