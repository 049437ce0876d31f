"""Contact sheets of crops, for looking at what the geometry does (prepare reports, debugging).

Marks: a frame whose landmarks were interpolated (no face detected; meta.json frames_without_face)
gets a red border and the word "interpolated"; `mask_box` (GeometryConfig.mask_box, fractions of
the crop) is drawn as a green rectangle on every tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
INTERPOLATED_BGR = (0, 0, 255)  # red border of a tile whose face was interpolated
MASK_BGR = (0, 255, 0)  # green outline of the mask region


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


def fit_height(img: np.ndarray, height: int) -> np.ndarray:
    """`img` (BGR or grey) scaled to `height` px high, keeping its aspect ratio (a new BGR array)."""
    img = _as_bgr(img)
    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    interpolation = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interpolation)


def put_label(img: np.ndarray, text: str, bottom: bool = False, box_bgr: tuple[int, int, int] = (0, 0, 0)) -> None:
    """Write `text` in the top-left (or bottom-left) corner, white on a filled box so it reads on any image."""
    scale = max(0.3, img.shape[0] / 256)
    thickness = max(1, round(scale))
    (tw, th), baseline = cv2.getTextSize(text, _LABEL_FONT, scale, thickness)
    top = img.shape[0] - (th + baseline + 4) if bottom else 0
    cv2.rectangle(img, (0, top), (tw + 4, top + th + baseline + 4), box_bgr, -1)
    cv2.putText(img, text, (2, top + th + 2), _LABEL_FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def draw_mask(tile: np.ndarray, mask_box: Sequence[float]) -> None:
    """Outline `mask_box` (x0, y0, x1, y1 as fractions of the square tile) in MASK_BGR."""
    side = tile.shape[0]
    x0, y0, x1, y1 = (round(f * side) for f in mask_box)
    cv2.rectangle(tile, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), MASK_BGR, 1)


def mark_interpolated(tile: np.ndarray) -> None:
    """A red border (3% of the side, at least 2 px) and the word "interpolated" at the bottom."""
    width = max(2, round(0.03 * tile.shape[0]))
    cv2.rectangle(tile, (0, 0), (tile.shape[1] - 1, tile.shape[0] - 1), INTERPOLATED_BGR, 2 * width)
    put_label(tile, "interpolated", bottom=True, box_bgr=INTERPOLATED_BGR)


def contact_sheet(
    images: Sequence[np.ndarray], cols: int = 8, cell: int = 128, labels: Sequence[str | int] | None = None,
    interpolated: Sequence[bool] | None = None, mask_box: Sequence[float] | None = None,
) -> np.ndarray:
    """Grid of `images` (BGR or grey), each fitted into a cell x cell square with its label (by
    default its index in `images`; pass frame numbers as `labels`) in the top-left corner.
    `interpolated[i]` marks image i (mark_interpolated); `mask_box` is outlined on every tile.

    Returns a (rows * cell, cols * cell, 3) uint8 BGR image; empty cells are black.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if cols < 1 or cell < 8:
        raise ValueError(f"need cols >= 1 and cell >= 8, got cols={cols} cell={cell}")
    for name, values in (("labels", labels), ("interpolated flags", interpolated)):
        if values is not None and len(values) != len(images):
            raise ValueError(f"{len(values)} {name} for {len(images)} images")
    rows = -(-len(images) // cols)
    sheet = np.zeros((rows * cell, cols * cell, 3), np.uint8)
    for i, img in enumerate(images):
        tile = _fit_cell(_as_bgr(img), cell)
        if mask_box is not None:
            draw_mask(tile, mask_box)
        if interpolated is not None and interpolated[i]:
            mark_interpolated(tile)
        put_label(tile, str(labels[i]) if labels is not None else str(i))
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
