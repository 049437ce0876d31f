"""Short real clips for tests: the first frames of a ../shared/media video, prepared as a dataset."""

from __future__ import annotations

from pathlib import Path

from lipsync.config import PrepareConfig
from lipsync.data.prepare import prepare
from lipsync.io import media

OBAMA = "edtalk_uncrop_Obama.mp4"  # 450x450, 25 fps, one speaker facing the camera


def write_clip(root: Path, source: Path, frames: int) -> Path:
    """The first `frames` frames of `source` (and their audio) re-encoded into root/clip.mp4
    (its audio also in root/clip.wav); returns the clip's path."""
    media.write_wav(root / "clip.wav", media.read_audio(source)[: frames * 16000 // 25])
    with media.VideoWriter(root / "clip.mp4", 450, 450, media.EncodeSettings(crf=12), audio=root / "clip.wav") as w:
        for i, frame in enumerate(media.iter_video_frames(source)):
            if i == frames:
                break
            w.write(frame)
    return root / "clip.mp4"


def prepare_clip(root: Path, source: Path, frames: int, name: str) -> Path:
    """`write_clip`, prepared into root/ds with lipsync/configs/prepare.yaml's defaults; returns
    the dataset dir."""
    prepare(str(write_clip(root, source, frames)), name, str(root / "ds"), PrepareConfig())
    return root / "ds"
