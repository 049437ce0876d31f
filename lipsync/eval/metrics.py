"""Quality metrics of generated frames: pure functions over numpy arrays and torch modules.

- `psnr`, `ssim`: image fidelity (SSIM from torchmetrics, never hand-written). Identical images give
  PSNR = inf and SSIM = 1.
- `lmd`: landmark distance of the lips (MediaPipe Face Mesh's FACEMESH_LIPS points, outer and inner
  contour), each frame's point set centred on its own mean, in pixels of a fixed-size crop of the
  face box (`lip_points`), so that numbers compare across presets and frame sizes.
- `sync_score`: LSE-D / LSE-C as defined for SyncNet evaluations (Prajwal et al., Wav2Lip): for each
  audio offset d in [-max_offset, max_offset] the mean embedding distance between face k and the
  audio of frame k + d; LSE-D is the distance at the best offset (the minimum), LSE-C (confidence)
  is median - minimum over the offsets, and the best offset is reported too.
  Distance = 1 - cosine similarity of the SyncNet's unit-length, non-negative embeddings
  (`lipsync.models.syncnet.sync_similarity`), so it lies in [0, 1]; this is NOT the euclidean
  distance that the original SyncNet's LSE-D uses, so the numbers are on a different scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from lipsync.face.geometry import to_crop_coords
from lipsync.models.syncnet import lower_face, sync_similarity

Box = tuple[int, int, int, int]


# --- image fidelity --------------------------------------------------------------------------------


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("cannot compare empty images")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of one shape; inf when they are identical."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _to_nchw(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> (1, C, H, W) float32 in [0, 1] (float64 convolutions are ~50x slower on CPU)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(torch.float32).div(255.0)[None]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two (H, W, 3) uint8 images (torchmetrics, 11x11 Gaussian window); 1.0 when identical.

    Both sides must be at least 11 pixels (the window); smaller images raise ValueError.
    """
    _check_pair(a, b)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[:2]}")
    from torchmetrics.functional.image import structural_similarity_index_measure  # heavy (1.5 s): here only

    value = structural_similarity_index_measure(_to_nchw(a), _to_nchw(b), data_range=1.0)
    return float(value)


# --- lips ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def lip_indices() -> np.ndarray:
    """Sorted Face Mesh indices of the lips (outer and inner contour): the 40 points of FACEMESH_LIPS."""
    from mediapipe.python.solutions.face_mesh_connections import (
        FACEMESH_LIPS,  # heavy import, only here
    )

    indices = np.array(sorted({i for edge in FACEMESH_LIPS for i in edge}), dtype=np.int64)
    indices.setflags(write=False)
    return indices


def lip_points(landmarks: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """(468, 2) frame-pixel landmarks -> (40, 2) lip points in the pixels of `crop(frame, box, size)`."""
    return to_crop_coords(np.asarray(landmarks)[lip_indices()], box, size)


def lmd(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean lip landmark distance of (N, P, 2) (or (P, 2)) point sets, each frame's set centred on its mean.

    Centring removes a translation of the whole mouth (head motion, crop jitter) so that what is
    left is the mouth's shape: open/closed, wide/round. 0 for identical shapes.
    """
    g = np.asarray(generated, dtype=np.float64)
    r = np.asarray(real, dtype=np.float64)
    if g.shape != r.shape or g.shape[-1] != 2 or g.ndim not in (2, 3) or g.size == 0:
        raise ValueError(f"expected two non-empty (N, P, 2) point sets of one shape, got {g.shape} and {r.shape}")
    g = g - g.mean(axis=-2, keepdims=True)
    r = r - r.mean(axis=-2, keepdims=True)
    return float(np.linalg.norm(g - r, axis=-1).mean())


def mouth_box(points: np.ndarray, size: int, pad: float) -> Box:
    """Bounding box (x0, y0, x1, y1) of (P, 2) lip points in an image of `size`, grown by `pad` * size
    on every side and clipped to the image (end-exclusive pixel bounds)."""
    grow = pad * size
    x0, y0 = np.floor(points.min(axis=0) - grow)
    x1, y1 = np.ceil(points.max(axis=0) + grow)
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), size), min(int(y1), size)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"mouth box of points {points.min(axis=0)}..{points.max(axis=0)} is outside a {size} image")
    return x0, y0, x1, y1


# --- what viewers see: jitter, flicker, seam, sharpness (issue 13) ---------------------------------

FLICKER_SIDE = 64  # mouth regions are compared at this size (grey), whatever the face box's size


def lip_jitter(lips: Sequence[np.ndarray | None]) -> float | None:
    """Mean frame-to-frame displacement (pixels) of the centred lip points over consecutive frames
    that both have a detection: mouth shape change per frame, head motion removed."""
    steps = []
    for a, b in zip(lips[:-1], lips[1:]):
        if a is None or b is None:
            continue
        a_c, b_c = a - a.mean(axis=0), b - b.mean(axis=0)
        steps.append(float(np.linalg.norm(b_c - a_c, axis=-1).mean()))
    return float(np.mean(steps)) if steps else None


def _grey(img: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (side, side), interpolation=cv2.INTER_AREA
                      ).astype(np.float32)


def flicker(mouths: Sequence[np.ndarray]) -> float | None:
    """Mean absolute grey-level change (0-255) between consecutive mouth regions, resized to one size."""
    grey = [_grey(m, FLICKER_SIDE) for m in mouths]
    if len(grey) < 2:
        return None
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(grey[:-1], grey[1:])]))


def sharpness(img: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: higher is sharper (blurred lips score low)."""
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def seam(frame: np.ndarray, box: Sequence[int], feather: float) -> tuple[float, float] | None:
    """(colour, gradient) discontinuity across the paste boundary of `box` in `frame`.

    colour: mean |pixel just outside the box - pixel just inside the feathered zone| along the four
    sides (BGR, 0-255); gradient: 95th percentile of the grey frame's Sobel magnitude within the
    feathered zone (a hard edge is a thin line of high gradient; a feathered one spreads it).
    Computed the same way on the real frame, it is the baseline a seamless paste would have.
    None when the box does not lie inside the frame with room for the band.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    side = x1 - x0
    zone = max(2, round(feather * side))
    h, w = frame.shape[:2]
    if x0 - 2 < 0 or y0 - 2 < 0 or x1 + 2 > w or y1 + 2 > h or side <= 2 * (zone + 2):
        return None
    img = frame.astype(np.float32)
    outer_in = zone + 2  # just inside the zone, where the paste is (nearly) opaque
    pairs = [
        (img[y0 - 2, x0 + outer_in:x1 - outer_in], img[y0 + outer_in, x0 + outer_in:x1 - outer_in]),  # top
        (img[y1 + 1, x0 + outer_in:x1 - outer_in], img[y1 - 1 - outer_in, x0 + outer_in:x1 - outer_in]),  # bottom
        (img[y0 + outer_in:y1 - outer_in, x0 - 2], img[y0 + outer_in:y1 - outer_in, x0 + outer_in]),  # left
        (img[y0 + outer_in:y1 - outer_in, x1 + 1], img[y0 + outer_in:y1 - outer_in, x1 - 1 - outer_in]),  # right
    ]
    colour = float(np.mean([np.abs(a - b).mean() for a, b in pairs]))
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    ring = np.zeros((h, w), bool)
    ring[y0:y1, x0:x1] = True
    ring[y0 + zone:y1 - zone, x0 + zone:x1 - zone] = False
    return colour, float(np.percentile(magnitude[ring], 95))


# --- sync (LSE-D / LSE-C) --------------------------------------------------------------------------


@dataclass
class SyncScore:
    """LSE-style sync measurement. `offsets[i]` has mean distance `curve[i]` (None: no frame had audio there)."""

    distance: float  # LSE-D analogue: mean 1 - cosine at the best offset (lower is better)
    confidence: float  # LSE-C analogue: median(curve) - distance (higher is better)
    offset: int  # best offset d in frames: face k matches the audio of frame k + d
    offsets: list[int]
    curve: list[float | None]

    def as_dict(self) -> dict:
        return asdict(self)


def offset_curve(face_emb: torch.Tensor, audio_emb: torch.Tensor, frames: np.ndarray, audio_frames: np.ndarray,
                 max_offset: int) -> np.ndarray:
    """Mean face-audio distance per offset d = -max_offset..max_offset -> (2 * max_offset + 1,) float64.

    face_emb (N, D) belongs to video frames `frames` (N,); audio_emb (M, D) to audio frames
    `audio_frames` (M,). At offset d face k is paired with the audio of frame k + d; pairs whose
    audio frame is not in `audio_frames` are left out, and an offset with no pair at all is NaN.
    """
    frames = np.asarray(frames, dtype=np.int64)
    audio_frames = np.asarray(audio_frames, dtype=np.int64)
    row_of = {int(a): i for i, a in enumerate(audio_frames)}
    curve = np.full(2 * max_offset + 1, np.nan)
    for j, d in enumerate(range(-max_offset, max_offset + 1)):
        pairs = [(i, row_of[int(k) + d]) for i, k in enumerate(frames) if int(k) + d in row_of]
        if not pairs:
            continue
        fi, ai = (torch.as_tensor(x, dtype=torch.long) for x in zip(*pairs))
        dist = 1.0 - sync_similarity(face_emb[fi], audio_emb[ai])  # (P,)
        curve[j] = float(dist.double().mean())
    return curve


def score_from_curve(curve: np.ndarray, max_offset: int) -> SyncScore:
    """LSE-D = min of the curve, LSE-C = median - min, offset = argmin (NaN offsets ignored)."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.shape != (2 * max_offset + 1,) or np.all(np.isnan(curve)):
        raise ValueError(f"need a curve of {2 * max_offset + 1} values with at least one number, got {curve}")
    best = int(np.nanargmin(curve))
    distance = float(curve[best])
    return SyncScore(distance=distance, confidence=float(np.nanmedian(curve)) - distance, offset=best - max_offset,
                     offsets=list(range(-max_offset, max_offset + 1)),
                     curve=[None if np.isnan(v) else float(v) for v in curve])


def _nearest(frames: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target frame number, the position in `frames` of the nearest frame number."""
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    right = np.clip(np.searchsorted(sorted_frames, targets), 0, len(frames) - 1)
    left = np.clip(right - 1, 0, len(frames) - 1)
    use_left = np.abs(sorted_frames[left] - targets) <= np.abs(sorted_frames[right] - targets)
    return order[np.where(use_left, left, right)]


def embed_for_sync(syncnet: torch.nn.Module, faces: torch.Tensor, frames: np.ndarray, mels: np.ndarray,
                   audio_frames: np.ndarray, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """SyncNet embeddings of N model crops and M mel windows, through the SyncNet's own forward only.

    faces (N, 3, S, S) float in [0, 1] of video frames `frames`; mels (M, n_mels, w) of audio frames
    `audio_frames`, which must include every frame number of `frames`. Each audio window is paired with
    the face of the nearest video frame (itself where it has one), so one forward pass per window
    gives both towers' embeddings; the face embedding of frame k is taken from the pair with its own
    audio. Returns (face_emb (N, D), audio_emb (M, D)) on the CPU.
    """
    frames = np.asarray(frames, dtype=np.int64)
    audio_frames = np.asarray(audio_frames, dtype=np.int64)
    row_of = {int(a): i for i, a in enumerate(audio_frames)}
    missing = [int(k) for k in frames if int(k) not in row_of]
    if missing:
        raise ValueError(f"audio windows are missing for video frames {missing[:5]}")
    partner = _nearest(frames, audio_frames)  # (M,) face position per audio window
    device = next(syncnet.parameters()).device
    face_size = tuple(syncnet.config.face_size)
    face_rows, audio_rows = [], []
    was_training = syncnet.training
    syncnet.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(audio_frames), batch_size):
                hi = min(lo + batch_size, len(audio_frames))
                face = lower_face(faces[partner[lo:hi]].to(device, torch.float32), face_size)  # (B, 3, h, w)
                mel = torch.from_numpy(np.ascontiguousarray(mels[lo:hi], dtype=np.float32)).to(device)[:, None]
                f, a = syncnet(face, mel)  # (B, D), (B, D)
                face_rows.append(f.float().cpu())
                audio_rows.append(a.float().cpu())
    finally:
        syncnet.train(was_training)
    pair_face = torch.cat(face_rows)  # (M, D): the face of window i's partner
    audio_emb = torch.cat(audio_rows)  # (M, D)
    own = torch.as_tensor([row_of[int(k)] for k in frames], dtype=torch.long)
    return pair_face[own], audio_emb


def sync_score(syncnet: torch.nn.Module, faces: torch.Tensor, frames: np.ndarray,
               mel_windows_of: Callable[[np.ndarray], np.ndarray], n_audio_frames: int, max_offset: int = 10,
               audio_offset: int = 0, batch_size: int = 32) -> SyncScore:
    """LSE-D / LSE-C of model crops `faces` (N, 3, S, S) in [0, 1] of video frames `frames` (N,).

    `mel_windows_of(audio_frames)` returns the (M, n_mels, w) mel windows of the given audio frame
    numbers; audio frames outside [0, n_audio_frames) do not exist and are left out of the curve.
    `audio_offset` is the pairing the SyncNet was trained with (face k with the audio window of frame
    k + audio_offset, see TrainConfig.sync_audio_offset): the reported offset is relative to it, so
    in-sync video scores offset 0. Faces whose own audio frame does not exist are left out.
    """
    labels = np.asarray(frames, dtype=np.int64) + audio_offset  # (N,) the audio frame each face belongs to
    keep = (labels >= 0) & (labels < n_audio_frames)
    if not keep.any():
        raise ValueError("sync_score needs at least one frame whose audio exists")
    labels = labels[keep]
    faces = faces[torch.from_numpy(np.flatnonzero(keep))]
    wanted = np.unique((labels[:, None] + np.arange(-max_offset, max_offset + 1)[None, :]).ravel())
    audio_frames = wanted[(wanted >= 0) & (wanted < n_audio_frames)]
    face_emb, audio_emb = embed_for_sync(syncnet, faces, labels, mel_windows_of(audio_frames), audio_frames,
                                         batch_size)
    return score_from_curve(offset_curve(face_emb, audio_emb, labels, audio_frames, max_offset), max_offset)
