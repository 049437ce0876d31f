"""A preview of a rendered video: a few evenly spaced frames, each with its painted crop enlarged.

    lipsync render ... --preview PNG            the CLI, after the render
    <output_root>/_reports/previews/<id>.png    one per dubbed item (DubConfig.preview), after its stitch

The frames are decoded from the published video (so the preview shows what was shipped, encode
included); the crop is the template's face box for that output frame (bounce(k + start_frame, n)),
the square the generator painted, scaled up to the row height so a blurred or smeared mouth shows.
Each row: [frame | crop], PREVIEW_HEIGHT px high, labelled with the output frame number.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lipsync.face import geometry
from lipsync.face.preview import fit_height, put_label, write_png
from lipsync.io import media, storage

PREVIEW_FRAMES = 4
PREVIEW_HEIGHT = 240


def preview_indices(n_frames: int, count: int = PREVIEW_FRAMES) -> list[int]:
    """`count` evenly spaced output frames, first and last included (fewer for a short video)."""
    if n_frames < 1:
        return []
    return sorted({int(i) for i in np.linspace(0, n_frames - 1, num=min(count, n_frames)).round()})


def preview_image(frames: Sequence[np.ndarray], boxes: Sequence[Sequence[int]], labels: Sequence[int | str],
                  height: int = PREVIEW_HEIGHT) -> np.ndarray:
    """One row per frame: the frame scaled to `height` px, then its box crop at height x height.

    Returns a (len(frames) * height, frame width at that height + height, 3) uint8 BGR image.
    """
    if not frames or len(frames) != len(boxes) or len(frames) != len(labels):
        raise ValueError(f"need as many boxes and labels as frames ({len(frames)}, {len(boxes)}, {len(labels)})")
    rows = []
    for frame, box, label in zip(frames, boxes, labels):
        scaled = fit_height(frame, height)
        crop = geometry.crop(frame, box, height)
        put_label(scaled, f"frame {label}")
        put_label(crop, "painted crop")
        rows.append(np.concatenate([scaled, crop], axis=1))
    return np.concatenate(rows, axis=0)


def template_boxes(character_uri: str) -> np.ndarray:
    """(n, 4) template boxes of a bundle, reading only templates/boxes.npy."""
    from lipsync.bundle import TEMPLATES_DIR
    from lipsync.data import layout

    data = storage.read_bytes(storage.join(str(character_uri), TEMPLATES_DIR, layout.BOXES_FILE))
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64)


def video_frames(path: str | Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The frames at `indices` of a local video (decoded in order; the decoder stops after the last)."""
    wanted, found = set(indices), {}
    last = max(wanted) if wanted else -1
    for k, frame in enumerate(media.iter_video_frames(path)):
        if k in wanted:
            found[k] = frame.copy()
        if k >= last:
            break
    return found


def write_video_preview(video_uri: str, preview_uri: str, boxes: np.ndarray, *, n_frames: int,
                        start_frame: int = 0, count: int = PREVIEW_FRAMES, height: int = PREVIEW_HEIGHT,
                        temp_dir: str | None = None) -> str:
    """Write the preview PNG of a rendered video (`n_frames` frames, templates `boxes`); returns its URI.

    `temp_dir`: where the PNG is written before it is published (storage.atomic_file)."""
    indices = preview_indices(n_frames, count)
    with storage.local_copy(video_uri) as local:
        frames = video_frames(local, indices)
    shown = [k for k in indices if k in frames]
    if not shown:
        raise ValueError(f"{video_uri}: no frames decoded for the preview")
    n = len(boxes)
    picked = [boxes[geometry.bounce(k + start_frame, n)] for k in shown]
    image = preview_image([frames[k] for k in shown], picked, shown, height)
    with storage.atomic_file(preview_uri, temp_dir=temp_dir) as tmp:
        write_png(tmp, image)
    return preview_uri
