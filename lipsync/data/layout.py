"""The character dataset directory: names of its files, and reading/validating it.

Layout (the seed's, plus what later stages need):
    full_body_img/{i}.jpg   frames at 25 fps, i = 0..n_frames-1
    landmarks/{i}.lms       468 lines "x y" (MediaPipe Face Mesh, pixels, smoothed, gaps interpolated)
    aud.wav                 the video's audio, 16 kHz mono, loudness-normalised (AudioConfig.loudness_lufs)
    boxes.npy               (n_frames, 4) int32 crop boxes (x0, y0, x1, y1)
    landmarks.npy           (n_frames, 468, 2) float32, the same landmarks as one array
    mel.npy                 (80, T) float32 Wav2Lip-style mel of aud.wav
    meta.json               see `prepare.build_meta`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.errors import InputError

DATASET_FORMAT = 1
LANDMARK_SCHEME = "mediapipe_face_mesh_468"

FRAMES_DIR = "full_body_img"
LANDMARKS_DIR = "landmarks"
AUDIO_FILE = "aud.wav"
BOXES_FILE = "boxes.npy"
LANDMARKS_FILE = "landmarks.npy"
MEL_FILE = "mel.npy"
META_FILE = "meta.json"
REQUIRED = (FRAMES_DIR, LANDMARKS_DIR, AUDIO_FILE, BOXES_FILE, LANDMARKS_FILE, MEL_FILE, META_FILE)


def frame_path(root: Path, i: int) -> Path:
    return Path(root) / FRAMES_DIR / f"{i}.jpg"


def lms_path(root: Path, i: int) -> Path:
    return Path(root) / LANDMARKS_DIR / f"{i}.lms"


def write_lms(path: Path, lms: np.ndarray) -> None:
    np.savetxt(path, lms, fmt="%.2f")


def read_lms(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float32).reshape(-1, 2)


def read_meta(root: Path) -> dict[str, Any]:
    with open(Path(root) / META_FILE) as f:
        return json.load(f)


def validate_dataset(root: Path) -> dict[str, Any]:
    """Check that `root` is a complete dataset of a format this version reads; return its meta."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset directory not found")
    missing = [name for name in REQUIRED if not (root / name).exists()]
    if missing:
        raise InputError(root, f"not a complete dataset: missing {', '.join(missing)}")
    meta = read_meta(root)
    fmt = meta.get("dataset_format")
    if fmt != DATASET_FORMAT:
        raise InputError(root, f"dataset format {fmt} is not supported (this version reads {DATASET_FORMAT}); "
                               "run `lipsync prepare` again")
    if meta.get("landmark_scheme") != LANDMARK_SCHEME:
        raise InputError(root, f"landmark scheme {meta.get('landmark_scheme')!r} != {LANDMARK_SCHEME!r}")
    n = meta["n_frames"]
    last = frame_path(root, n - 1)
    if not last.exists():
        raise InputError(root, f"dataset is missing frames (no {FRAMES_DIR}/{n - 1}.jpg)")
    return meta
