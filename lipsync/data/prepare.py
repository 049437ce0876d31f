"""`prepare`: a talking-head video -> a character dataset directory (see layout.py).

Steps: (1) check inputs and output, (2) decode audio, normalise its loudness -> aud.wav + mel, (3) stream frames: write
JPEGs (thread pool) and detect landmarks, (4) fill gaps, smooth, crop boxes, refuse videos where
most frames have no face, (5) write landmarks, boxes, meta, (6) publish atomically.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from lipsync import __version__
from lipsync.audio import loudness
from lipsync.audio.mel import melspectrogram
from lipsync.config import PrepareConfig, to_dict
from lipsync.data import layout
from lipsync.errors import InputError, OutputExistsError
from lipsync.face import geometry
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.face.preview import contact_sheet, write_png
from lipsync.io import media, storage

ProgressFn = Callable[[int, int], None]  # (frames done, frames expected)


@dataclass
class PrepareResult:
    out: str
    n_frames: int
    duration: float
    frames_without_face: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def faces_found(self) -> int:
        return self.n_frames - len(self.frames_without_face)


def check_video(path: Path, cfg: PrepareConfig) -> media.MediaInfo:
    info = media.probe(path)
    if not info.has_video:
        raise InputError(path, "has no video stream (expected a talking-head video)")
    if not info.has_audio:
        raise InputError(path, "has no audio track (prepare needs the speech that goes with the video)")
    if info.duration > cfg.max_duration_s:
        raise InputError(path, f"video is {info.duration:.0f} s long; the maximum is {cfg.max_duration_s:.0f} s")
    return info


def extract_frames_and_landmarks(
    video: Path, info: media.MediaInfo, out: Path, cfg: PrepareConfig, progress: ProgressFn | None
) -> list[np.ndarray | None]:
    """Write every 25 fps frame as JPEG (in a thread pool) and detect its landmarks."""
    (out / layout.FRAMES_DIR).mkdir(parents=True)
    expected = max(1, round(info.duration * cfg.fps))
    params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]
    found: list[np.ndarray | None] = []
    with FaceMeshDetector(cfg.min_detection_confidence, cfg.min_tracking_confidence) as detector, \
            ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for i, frame in enumerate(media.iter_video_frames(video, fps=cfg.fps, info=info)):
            pending.append(pool.submit(cv2.imwrite, str(layout.frame_path(out, i)), frame, params))
            found.append(detector.detect(frame))
            if len(pending) > 64:
                _raise_failed_writes(pending[:32], out)
                pending = pending[32:]
            if progress:
                progress(i + 1, expected)
        _raise_failed_writes(pending, out)
    return found


def _raise_failed_writes(futures, out: Path) -> None:
    for fut in futures:
        if not fut.result():
            raise OSError(f"{out}: writing a JPEG frame failed")


def resolve_landmarks(video: Path, found: list[np.ndarray | None], cfg: PrepareConfig
                      ) -> tuple[np.ndarray, list[int]]:
    """Interpolate over frames without a face, smooth, and refuse videos that are mostly faceless."""
    n = len(found)
    missing = [i for i, lms in enumerate(found) if lms is None]
    if len(missing) == n:
        raise InputError(video, f"no face found in any of its {n} frames")
    if len(missing) > cfg.max_no_face_fraction * n:
        raise InputError(video, f"no face found in {len(missing)} of {n} frames "
                                f"(more than {cfg.max_no_face_fraction:.0%}); use a video where the face is visible")
    filled, missing = geometry.fill_missing(found)
    return geometry.smooth(filled, cfg.geometry.smooth_window), missing


def build_meta(name: str, video: Path, info: media.MediaInfo, n_frames: int, wav: np.ndarray,
               missing: list[int], cfg: PrepareConfig) -> dict:
    return {
        "name": name,
        "dataset_format": layout.DATASET_FORMAT,
        "tool": {"name": "lipsync", "version": __version__},
        "fps": cfg.fps,
        "n_frames": n_frames,
        "frame_size": [info.width, info.height],
        "landmark_scheme": layout.LANDMARK_SCHEME,
        "frames_without_face": missing,
        "source": {"file": video.name, "sha256": storage.file_sha256(video), "video_codec": info.video_codec,
                   "fps": info.fps, "duration": info.duration},
        "audio": {"sample_rate": cfg.audio.sample_rate, "n_samples": int(wav.size),
                  "duration": wav.size / cfg.audio.sample_rate},
        "config": to_dict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_dataset_arrays(out: Path, lms: np.ndarray, boxes: np.ndarray) -> None:
    (out / layout.LANDMARKS_DIR).mkdir()
    for i, frame_lms in enumerate(lms):
        layout.write_lms(layout.lms_path(out, i), frame_lms)
    np.save(out / layout.LANDMARKS_FILE, lms.astype(np.float32))
    np.save(out / layout.BOXES_FILE, boxes.astype(np.int32))


def preview_frames(n_frames: int, faceless: list[int], count: int = 16) -> list[int]:
    """`count` frames for the contact sheet: evenly spaced, with up to a quarter of them swapped for
    faceless (interpolated) frames, so those are always looked at when there are any."""
    even = [int(i) for i in np.linspace(0, n_frames - 1, num=min(count, n_frames)).round()]
    shown = [faceless[int(j)] for j in np.linspace(0, len(faceless) - 1, num=min(len(faceless), max(1, count // 4))
                                                   ).round()] if faceless else []
    rest = [i for i in even if i not in shown]
    keep = np.linspace(0, len(rest) - 1, num=max(0, min(len(rest), count - len(shown)))).round().astype(int)
    return sorted(set(shown) | {rest[int(j)] for j in keep})


def write_preview(out_dir: Path, boxes: np.ndarray, preview_uri: str, count: int = 16,
                  faceless: list[int] | None = None, mask_box: tuple[float, ...] | None = None) -> None:
    """A contact sheet of crops of evenly spaced frames (to check mouth and chin are inside), the
    interpolated (faceless) frames among them marked and the mask region outlined."""
    faceless = sorted(faceless or [])
    idx = preview_frames(len(boxes), faceless, count)
    crops = [geometry.crop(media.read_image(layout.frame_path(out_dir, i)), boxes[i], 160) for i in idx]
    missing = set(faceless)
    sheet = contact_sheet(crops, cols=4, cell=160, labels=idx, interpolated=[i in missing for i in idx],
                          mask_box=mask_box)
    with storage.atomic_file(preview_uri) as tmp:
        write_png(tmp, sheet)


def prepare(video_uri: str, name: str, out_uri: str, cfg: PrepareConfig = PrepareConfig(),
            overwrite: bool = False, preview_uri: str | None = None,
            progress: ProgressFn | None = None) -> PrepareResult:
    """Turn a talking-head video into a character dataset at `out_uri` (published only when complete)."""
    started = time.perf_counter()
    # 1. inputs and output
    if storage.exists(out_uri) and not overwrite:
        raise OutputExistsError(out_uri)
    with storage.local_copy(video_uri) as video:
        info = check_video(video, cfg)
        with storage.atomic_dir(out_uri, overwrite=overwrite) as tmp:
            tmp = Path(tmp)
            # 2. audio
            wav = loudness.normalise(media.read_audio(video, cfg.audio.sample_rate), cfg.audio, inplace=True)
            media.write_wav(tmp / layout.AUDIO_FILE, wav, cfg.audio.sample_rate)
            np.save(tmp / layout.MEL_FILE, melspectrogram(wav, cfg.audio))
            # 3. frames + landmarks
            found = extract_frames_and_landmarks(video, info, tmp, cfg, progress)
            # 4. landmarks -> boxes
            lms, missing = resolve_landmarks(video, found, cfg)
            boxes = geometry.crop_boxes(lms, cfg.geometry)
            # 5. arrays + meta
            write_dataset_arrays(tmp, lms, boxes)
            meta = build_meta(name, video, info, len(found), wav, missing, cfg)
            storage.write_json(str(tmp / layout.META_FILE), meta)
            if preview_uri:
                write_preview(tmp, boxes, preview_uri, faceless=missing, mask_box=cfg.geometry.mask_box)
    return PrepareResult(out=out_uri, n_frames=len(found), duration=wav.size / cfg.audio.sample_rate,
                         frames_without_face=missing, seconds=time.perf_counter() - started)
